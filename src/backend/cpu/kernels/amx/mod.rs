//! AMX tiles (Sapphire Rapids and later Intel CPUs) for the integer matmul of batched steps: a
//! tile instruction multiplies 16 tokens by a 16-row weight block of 32 values (`group_tiles`),
//! where VNNI needs 128 instructions for the same products.
//!
//! Using the tiles takes three things, checked once per process ([`hardware`]): the CPU's AMX-TILE
//! and AMX-INT8 bits (CPUID leaf 7), the operating system's permission, which Linux grants per
//! process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`; without it the first tile
//! instruction kills the process), and `KILN_AMX` not set to `off`. Anything missing leaves the
//! VNNI kernels in charge, which give the same bits (`group_tiles` says why).

mod emulated;
mod group_tiles;
mod tiles;

use std::sync::OnceLock;

pub use emulated::EmulatedTiles;
pub use group_tiles::{amx_rows, MIN_TOKENS, TILE_TOKENS};
pub use tiles::{HardwareTiles, TileConfig, TileUnit};

/// Which tiles the integer matmul runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileSource {
    Hardware(HardwareTiles),
    /// The emulator: for tests, which run the AMX kernel on CPUs without AMX.
    Emulated,
}

/// The CPU's tiles, when this process may use them; otherwise why not (for logs and `kiln bench`).
pub fn hardware() -> Result<HardwareTiles, &'static str> {
    static DETECTED: OnceLock<Result<HardwareTiles, String>> = OnceLock::new();
    let detected = DETECTED.get_or_init(|| {
        if std::env::var("KILN_AMX").as_deref() == Ok("off") {
            return Err("switched off by KILN_AMX=off".to_string());
        }
        if !cpu_has_amx() {
            return Err("this CPU has no AMX-TILE/AMX-INT8".to_string());
        }
        request_permission()?;
        // SAFETY: both checks above passed.
        Ok(unsafe { HardwareTiles::new_unchecked() })
    });
    detected.as_ref().copied().map_err(|why| why.as_str())
}

/// AMX-TILE (CPUID.7.0:EDX bit 24) and AMX-INT8 (bit 25), with AVX-512 for the rest of the
/// kernel (every CPU with AMX has it, but a hypervisor may hide it).
fn cpu_has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 7 exists on every CPU that runs x86-64 code kiln supports (it reports
        // zeros where a feature is absent).
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        tile && int8 && super::Isa::Avx512.supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks Linux for the tile data state (XTILEDATA, feature 18) for this process; afterwards the
/// kernel saves and restores tiles across context switches. Granted once, it holds for every
/// thread of the process, including the pool's, which already exist.
pub fn request_permission() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these codes reads an integer argument or writes one u64 to the
        // pointer given.
        let requested = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
        if requested != 0 {
            let error = std::io::Error::last_os_error();
            // The kernel's reasons, as its permission code gives them.
            let hint = match error.raw_os_error() {
                Some(libc::EINVAL) => "Linux 5.16 or later is needed",
                Some(libc::EOPNOTSUPP) => "the CPU has no AMX, or the kernel has the tile state switched off",
                Some(libc::ENOSPC) => "a thread's signal stack is too small for the tile state",
                _ => "unexpected answer",
            };
            return Err(format!("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {error}; {hint})"));
        }
        let mut permitted: u64 = 0;
        let read = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64) };
        if read != 0 || permitted >> XFEATURE_XTILEDATA & 1 == 0 {
            return Err(format!("Linux did not grant the AMX tile state (permitted features {permitted:#x})"));
        }
        Ok(())
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    Err("kiln asks for AMX permission only on Linux".to_string())
}

/// The tiles the integer matmul uses at `isa` on this machine: the hardware's where there are
/// any (the kernel's vector half is AVX-512).
pub fn detected(isa: super::Isa) -> Option<TileSource> {
    if isa != super::Isa::Avx512 {
        return None;
    }
    hardware().ok().map(TileSource::Hardware)
}

/// One line for start-up logs and `kiln bench`: "on" or "off (why)".
pub fn describe() -> String {
    match hardware() {
        Ok(_) => "on".to_string(),
        Err(why) => format!("off ({why})"),
    }
}

#[cfg(test)]
mod tests {
    /// The permission request answers as the CPU allows: granted where CPUID shows AMX, refused
    /// (an error, not a crash) where it does not: the fallback's path on every other machine.
    #[test]
    fn permission_follows_the_cpu() {
        let granted = super::request_permission();
        if super::cpu_has_amx() {
            assert!(granted.is_ok(), "AMX CPU, but: {granted:?}");
        } else if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            let why = granted.expect_err("Linux granted tile state on a CPU without AMX");
            assert!(why.contains("arch_prctl"), "{why}");
            eprintln!("refused, as it should be here: {why}");
            assert!(super::hardware().is_err());
        }
    }
}
