//! Kernel type information (BTF): struct member offsets, through anonymous unions and
//! structs, and enum values by name.
use std::collections::HashMap;

use anyhow::{Context as _, Result};
use btf_rs::{Backend, Btf, Type};

use super::VMLINUX_BTF;

/// The kernel's BTF with the named types rsttrace asks about found in one pass.
///
/// vmlinux holds ~150k types and btf-rs finds a name by walking all of them: one walk per
/// lookup made start-up spend most of its time there (about 40 walks, ~100 ms on a 2-core
/// VM). One walk with every wanted name at once costs about what a single lookup did.
pub struct Vmlinux {
    btf: Btf,
    named: HashMap<String, Vec<Type>>,
}

impl Vmlinux {
    /// Opens vmlinux BTF and indexes the types named `wanted` (struct, union or enum
    /// names: the first part of each `struct.member` path).
    pub fn open<'a>(wanted: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let btf = open_vmlinux_btf()?;
        let mut names: Vec<&str> = wanted.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        let alternation = names
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|");
        let pattern = regex::Regex::new(&format!("^(?:{alternation})$"))
            .context("building the BTF name pattern")?;
        let mut named: HashMap<String, Vec<Type>> = HashMap::new();
        let ids = btf
            .resolve_ids_by_regex(&pattern)
            .with_context(|| format!("reading {VMLINUX_BTF}"))?;
        for id in ids {
            let Ok(ty) = btf.resolve_type_by_id(id) else {
                continue;
            };
            let Some(name) = ty.as_btf_type().and_then(|t| btf.resolve_name(t).ok()) else {
                continue;
            };
            named.entry(name).or_default().push(ty);
        }
        Ok(Self { btf, named })
    }

    /// Byte offset of `struct.member[.member...]`, looking through anonymous unions and
    /// structs. The struct's name must have been among `wanted`.
    pub fn struct_offset(&self, path: &str) -> Option<u32> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut ty = self
            .named
            .get(first)?
            .iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))?
            .clone();
        let mut total = 0u32;
        for member in parts {
            let (bits, member_ty) = find_member(&self.btf, &ty, member)?;
            total = total.checked_add(bits / 8)?;
            ty = member_ty;
        }
        Some(total)
    }

    /// The value of `member` in enum `enum_name` (which must have been among `wanted`).
    pub fn enum_value(&self, enum_name: &str, member: &str) -> Option<u32> {
        self.enum_names(enum_name)
            .into_iter()
            .find_map(|(v, n)| (n == member).then_some(v))
    }

    /// How many arguments raw tracepoint `event` passes (its `btf_trace_<event>` typedef,
    /// a pointer to a function whose first parameter is the context), when BTF has it and
    /// `btf_trace_<event>` was among `wanted`.
    pub fn raw_tracepoint_args(&self, event: &str) -> Option<usize> {
        let typedef = self
            .named
            .get(&format!("btf_trace_{event}"))?
            .iter()
            .find(|t| matches!(t, Type::Typedef(_)))?;
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(typedef.as_btf_type()?).ok()? else {
            return None;
        };
        match self.btf.resolve_chained_type(&ptr).ok()? {
            Type::FuncProto(f) => Some(f.parameters.len().saturating_sub(1)),
            _ => None,
        }
    }

    /// Every member of enum `enum_name` by value.
    pub fn enum_names(&self, enum_name: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        for ty in self.named.get(enum_name).into_iter().flatten() {
            if let Type::Enum(e) = ty {
                for m in &e.members {
                    if let Ok(name) = self.btf.resolve_name(m) {
                        out.insert(m.val(), name);
                    }
                }
            }
        }
        out
    }
}

/// mmap()ing /sys/kernel/btf/vmlinux is fastest but only possible on recent kernels
/// (~6.16; older ones answer ENODEV): read it whole there.
fn open_vmlinux_btf() -> Result<Btf> {
    Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap)
        .or_else(|_| Btf::from_file_with_backend(VMLINUX_BTF, Backend::Cache))
        .with_context(|| format!("parsing {VMLINUX_BTF}"))
}

/// Finds `name` in a struct or union, descending into anonymous members. Returns the bit
/// offset from the start of `ty` and the member's (typedef-resolved) type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, Type)> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let member_ty = resolve_through_qualifiers(btf, btf.resolve_chained_type(m).ok()?)?;
        if member_name == name {
            return Some((m.bit_offset(), member_ty));
        }
        if member_name.is_empty() {
            if let Some((inner, t)) = find_member(btf, &member_ty, name) {
                return Some((m.bit_offset() + inner, t));
            }
        }
    }
    None
}

fn resolve_through_qualifiers(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match &ty {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let next = btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
                ty = next;
            }
            _ => return Some(ty),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Runs against the build machine's own BTF when it has one; the offsets it checks are
    /// ABI-stable in practice.
    #[test]
    fn resolves_real_offsets_when_btf_is_present() {
        if !Path::new(VMLINUX_BTF).exists() {
            // CI runs on a kernel with BTF: there the check must run.
            assert!(
                std::env::var_os("CI").is_none(),
                "{VMLINUX_BTF} is missing on a CI machine"
            );
            crate::note!(
                "no {VMLINUX_BTF}: skipping the live BTF check (the decoder tests still run)"
            );
            return;
        }
        let btf = Vmlinux::open(["socket", "task_struct", "file", "sk_rst_reason"]).expect("btf");
        let sk = btf.struct_offset("socket.sk").expect("socket.sk");
        assert!(sk > 0 && sk < 256, "socket.sk at {sk}");
        assert!(btf.struct_offset("task_struct.exit_code").is_some());
        assert!(btf.struct_offset("file.private_data").is_some());
        assert!(btf.struct_offset("task_struct.no_such_member").is_none());
        assert!(
            btf.struct_offset("sock.sk_err").is_none(),
            "sock was not wanted"
        );
        assert_eq!(
            btf.enum_value("sk_rst_reason", "SK_RST_REASON_NOT_SPECIFIED"),
            Some(0)
        );
    }
}
