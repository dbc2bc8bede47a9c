//! Kernel type information (BTF): struct member offsets, through anonymous unions and
//! structs, and enum values by name.
use std::collections::HashMap;

use anyhow::{Context as _, Result};
use btf_rs::{Backend, Btf, Type};

use super::VMLINUX_BTF;

/// mmap()ing /sys/kernel/btf/vmlinux is fastest but only possible on recent kernels
/// (~6.16; older ones answer ENODEV): read it whole there.
pub fn open_vmlinux_btf() -> Result<Btf> {
    Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap)
        .or_else(|_| Btf::from_file_with_backend(VMLINUX_BTF, Backend::Cache))
        .with_context(|| format!("parsing {VMLINUX_BTF}"))
}

/// Byte offset of `struct.member[.member...]`, looking through anonymous unions and structs.
pub fn struct_offset(btf: &Btf, path: &str) -> Option<u32> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut ty = named_struct(btf, first)?;
    let mut total = 0u32;
    for member in parts {
        let (bits, member_ty) = find_member(btf, &ty, member)?;
        total = total.checked_add(bits / 8)?;
        ty = member_ty;
    }
    Some(total)
}

fn named_struct(btf: &Btf, name: &str) -> Option<Type> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
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

pub fn enum_value(btf: &Btf, enum_name: &str, member: &str) -> Option<u32> {
    enum_names(btf, enum_name)
        .into_iter()
        .find_map(|(v, n)| (n == member).then_some(v))
}

pub fn enum_names(btf: &Btf, enum_name: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Ok(types) = btf.resolve_types_by_name(enum_name) else {
        return out;
    };
    for ty in types {
        if let Type::Enum(e) = ty {
            for m in &e.members {
                if let Ok(name) = btf.resolve_name(m) {
                    out.insert(m.val(), name);
                }
            }
        }
    }
    out
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
            eprintln!(
                "no {VMLINUX_BTF}: skipping the live BTF check (the decoder tests still run)"
            );
            return;
        }
        let btf = open_vmlinux_btf().expect("btf");
        let sk = struct_offset(&btf, "socket.sk").expect("socket.sk");
        assert!(sk > 0 && sk < 256, "socket.sk at {sk}");
        assert!(struct_offset(&btf, "task_struct.exit_code").is_some());
        assert!(struct_offset(&btf, "file.private_data").is_some());
        assert!(struct_offset(&btf, "task_struct.no_such_member").is_none());
    }
}
