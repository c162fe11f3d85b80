//! The AMX tile operations the integer matmul uses, behind one small trait with two units: the
//! CPU's own instructions (inline assembly, since Rust has no stable AMX intrinsics) and a plain
//! Rust emulator (`emulated.rs`) that runs the same kernel code on any CPU, so CI checks the
//! kernel's tiling, operand layouts and tile shapes on machines without AMX.

/// Tile registers of palette 1.
pub const TILE_REGISTERS: usize = 8;
/// Most rows of a tile.
pub const MAX_ROWS: usize = 16;
/// Most bytes per tile row.
pub const MAX_ROW_BYTES: usize = 64;

/// The 64-byte operand of `ldtilecfg` for palette 1: each tile register's rows and bytes per row
/// (a register left at 0 × 0 is unused; touching it faults).
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    row_bytes: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Palette 1 with tile i shaped `shapes[i]` = (rows, bytes per row).
    pub fn new(shapes: &[(usize, usize)]) -> TileConfig {
        assert!(shapes.len() <= TILE_REGISTERS, "palette 1 has {TILE_REGISTERS} tile registers");
        let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], row_bytes: [0; 16], rows: [0; 16] };
        for (i, &(rows, row_bytes)) in shapes.iter().enumerate() {
            assert!(rows <= MAX_ROWS && row_bytes <= MAX_ROW_BYTES, "tile {i} is {rows} × {row_bytes} bytes");
            config.rows[i] = rows as u8;
            config.row_bytes[i] = row_bytes as u16;
        }
        config
    }

    /// (rows, bytes per row) of tile register `tile`.
    pub fn shape(&self, tile: usize) -> (usize, usize) {
        (self.rows[tile] as usize, self.row_bytes[tile] as usize)
    }
}

/// The tile instructions, one method each, with the tile registers as const parameters (the
/// instructions encode them).
///
/// # Safety
/// Every method: the unit is configured (`configure`) before any other call and released after
/// the last; the pointers given to `load` and `store` hold the configured rows × bytes at their
/// stride; the registers used have shapes that fit the instruction.
#[allow(clippy::missing_safety_doc)]
pub trait TileUnit {
    /// `ldtilecfg`: shapes every tile register and zeroes them.
    unsafe fn configure(&mut self, config: &TileConfig);
    /// `tilezero`.
    unsafe fn zero<const TILE: u8>(&mut self);
    /// `tileloadd`: row r of the tile from `base + r·stride`.
    unsafe fn load<const TILE: u8>(&mut self, base: *const u8, stride: usize);
    /// `tilestored`: row r of the tile to `base + r·stride`.
    unsafe fn store<const TILE: u8>(&mut self, base: *mut u8, stride: usize);
    /// `tdpbsud`: C[m][n] += Σ_k A[m][k] · B[k / 4][4n + k % 4] on i32 lanes of C, A's bytes
    /// signed, B's unsigned (B holds four consecutive k of each column n side by side).
    unsafe fn dot_signed_unsigned<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tilerelease`: back to the unconfigured state, so the OS need not save the tiles.
    unsafe fn release(&mut self);
}

/// The CPU's AMX instructions. A value exists only once `super::hardware` has found AMX-TILE and
/// AMX-INT8 on the CPU and the kernel's permission to use them, which is what makes the methods
/// sound to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareTiles {
    _detected: (),
}

impl HardwareTiles {
    /// # Safety
    /// The CPU has AMX-TILE and AMX-INT8 and the process holds the kernel's permission.
    pub(super) unsafe fn new_unchecked() -> HardwareTiles {
        HardwareTiles { _detected: () }
    }
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for HardwareTiles {
    #[inline(always)]
    unsafe fn configure(&mut self, config: &TileConfig) {
        std::arch::asm!("ldtilecfg [{0}]", in(reg) config as *const TileConfig, options(nostack, readonly));
    }

    #[inline(always)]
    unsafe fn zero<const TILE: u8>(&mut self) {
        std::arch::asm!("tilezero tmm{t}", t = const TILE, options(nostack, nomem));
    }

    #[inline(always)]
    unsafe fn load<const TILE: u8>(&mut self, base: *const u8, stride: usize) {
        std::arch::asm!(
            "tileloadd tmm{t}, [{base} + {stride} * 1]",
            t = const TILE, base = in(reg) base, stride = in(reg) stride, options(nostack, readonly)
        );
    }

    #[inline(always)]
    unsafe fn store<const TILE: u8>(&mut self, base: *mut u8, stride: usize) {
        std::arch::asm!(
            "tilestored [{base} + {stride} * 1], tmm{t}",
            t = const TILE, base = in(reg) base, stride = in(reg) stride, options(nostack)
        );
    }

    #[inline(always)]
    unsafe fn dot_signed_unsigned<const C: u8, const A: u8, const B: u8>(&mut self) {
        std::arch::asm!("tdpbsud tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for HardwareTiles {
    // Never constructed off x86-64 (`super::hardware` finds no AMX there).
    unsafe fn configure(&mut self, _: &TileConfig) {
        unreachable!("AMX exists only on x86-64")
    }
    unsafe fn zero<const TILE: u8>(&mut self) {
        unreachable!("AMX exists only on x86-64")
    }
    unsafe fn load<const TILE: u8>(&mut self, _: *const u8, _: usize) {
        unreachable!("AMX exists only on x86-64")
    }
    unsafe fn store<const TILE: u8>(&mut self, _: *mut u8, _: usize) {
        unreachable!("AMX exists only on x86-64")
    }
    unsafe fn dot_signed_unsigned<const C: u8, const A: u8, const B: u8>(&mut self) {
        unreachable!("AMX exists only on x86-64")
    }
    unsafe fn release(&mut self) {
        unreachable!("AMX exists only on x86-64")
    }
}
