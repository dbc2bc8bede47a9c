//! Tracepoint record layouts, as a tracefs format file describes them.
//!
//! Layouts change between kernels (tcp_send_reset gained `reason` and sockaddr-sized
//! addresses around 6.10), so nothing here is hard-coded: every decoder asks a
//! [`RecordFormat`] for a field by name and copes with its absence.
use anyhow::{bail, Context as _, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
    /// The C declaration, e.g. `__u8 saddr[28]` or `__data_loc char[] comm`.
    pub decl: String,
}

impl Field {
    /// `__data_loc` fields hold (len << 16 | offset) of a string stored after the record.
    pub fn is_data_loc(&self) -> bool {
        self.decl.starts_with("__data_loc")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFormat {
    // Looked up by name for every decoded event: a fast hasher.
    pub fields: std::collections::HashMap<String, Field, foldhash::fast::RandomState>,
}

impl RecordFormat {
    pub fn parse(text: &str) -> Result<Self> {
        let mut fields = std::collections::HashMap::default();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            let mut signed = false;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<usize>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<usize>().ok();
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = v == "1";
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                bail!("malformed format line: {line}");
            };
            let name = field_name(decl)
                .with_context(|| format!("no field name in format line: {line}"))?;
            fields.insert(
                name.to_string(),
                Field {
                    offset,
                    size,
                    signed,
                    decl: decl.to_string(),
                },
            );
        }
        if fields.is_empty() {
            bail!("format file lists no fields");
        }
        Ok(Self { fields })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Bytes from the record start to the end of its last fixed field: what the kernel
    /// program must copy. `__data_loc` payloads (after the fixed part) are not needed.
    pub fn fixed_len(&self) -> usize {
        self.fields
            .values()
            .map(|f| f.offset + f.size)
            .max()
            .unwrap_or(0)
    }

    pub fn offset_of(&self, name: &str) -> Option<usize> {
        self.field(name).map(|f| f.offset)
    }
}

/// `const void * skaddr` -> `skaddr`; `__u8 saddr[28]` -> `saddr`.
fn field_name(decl: &str) -> Option<&str> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// tcp:tcp_send_reset's format file on 6.18, as the kernel prints it; the decoder's
    /// tests read it too.
    pub(crate) const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 2280
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: \"skbaddr=%p\"
";

    #[test]
    fn parses_fields_with_pointers_arrays_and_enums() {
        let f = RecordFormat::parse(SEND_RESET_6_18).expect("parse");
        assert_eq!(f.offset_of("skaddr"), Some(16));
        assert_eq!(f.offset_of("reason"), Some(28));
        let saddr = f.field("saddr").expect("saddr");
        assert_eq!((saddr.offset, saddr.size), (32, 28));
        assert!(f.field("common_pid").expect("pid").signed);
        assert_eq!(f.fixed_len(), 88);
    }

    #[test]
    fn data_loc_fields_are_recognised() {
        let text = "format:
	field:int pid;	offset:8;	size:4;	signed:1;
	field:__data_loc char[] comm;	offset:12;	size:4;	signed:0;
";
        let f = RecordFormat::parse(text).expect("parse");
        assert!(f.field("comm").expect("comm").is_data_loc());
        assert!(!f.field("pid").expect("pid").is_data_loc());
    }

    #[test]
    fn malformed_format_is_an_error() {
        assert!(RecordFormat::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
        assert!(RecordFormat::parse("nothing here").is_err());
    }
}
