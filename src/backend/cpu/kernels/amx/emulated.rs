//! AMX tiles emulated in plain Rust: the same [`TileUnit`] as the hardware, so the AMX kernels
//! run, and are compared with the VNNI kernels, on every CPU (CI has no AMX). It follows the
//! instructions' definitions in Intel's manual, including the checks that raise #UD on real
//! hardware (mismatched shapes, an unconfigured unit, one register used twice), which here
//! panic with the shapes involved: a kernel whose tiles do not fit each other fails its tests
//! rather than only on a Sapphire Rapids machine.

use super::tiles::{TileConfig, TileUnit, MAX_ROWS, MAX_ROW_BYTES, TILE_REGISTERS};

pub struct EmulatedTiles {
    config: Option<TileConfig>,
    tiles: [[[u8; MAX_ROW_BYTES]; MAX_ROWS]; TILE_REGISTERS],
}

impl Default for EmulatedTiles {
    fn default() -> Self {
        EmulatedTiles { config: None, tiles: [[[0; MAX_ROW_BYTES]; MAX_ROWS]; TILE_REGISTERS] }
    }
}

impl EmulatedTiles {
    /// (rows, bytes per row) of a configured, non-empty tile register.
    fn shape(&self, tile: u8, instruction: &str) -> (usize, usize) {
        let config = self.config.as_ref().unwrap_or_else(|| panic!("{instruction} on tmm{tile} before ldtilecfg"));
        assert!((tile as usize) < TILE_REGISTERS, "{instruction}: there is no tmm{tile}");
        let (rows, row_bytes) = config.shape(tile as usize);
        assert!(rows > 0 && row_bytes > 0, "{instruction}: tmm{tile} is not configured (0 rows or bytes)");
        (rows, row_bytes)
    }
}

impl TileUnit for EmulatedTiles {
    unsafe fn configure(&mut self, config: &TileConfig) {
        self.config = Some(*config);
        self.tiles = [[[0; MAX_ROW_BYTES]; MAX_ROWS]; TILE_REGISTERS];
    }

    unsafe fn zero<const TILE: u8>(&mut self) {
        self.shape(TILE, "tilezero");
        self.tiles[TILE as usize] = [[0; MAX_ROW_BYTES]; MAX_ROWS];
    }

    unsafe fn load<const TILE: u8>(&mut self, base: *const u8, stride: usize) {
        let (rows, row_bytes) = self.shape(TILE, "tileloadd");
        // Bytes beyond the configured shape read as zero, as the instruction leaves them.
        let tile = &mut self.tiles[TILE as usize];
        *tile = [[0; MAX_ROW_BYTES]; MAX_ROWS];
        for (r, row) in tile.iter_mut().enumerate().take(rows) {
            // SAFETY: the caller keeps `rows` rows of `row_bytes` at `stride` readable.
            std::ptr::copy_nonoverlapping(base.add(r * stride), row.as_mut_ptr(), row_bytes);
        }
    }

    unsafe fn store<const TILE: u8>(&mut self, base: *mut u8, stride: usize) {
        let (rows, row_bytes) = self.shape(TILE, "tilestored");
        for (r, row) in self.tiles[TILE as usize].iter().enumerate().take(rows) {
            // SAFETY: the caller keeps `rows` rows of `row_bytes` at `stride` writable.
            std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(r * stride), row_bytes);
        }
    }

    unsafe fn dot_signed_unsigned<const C: u8, const A: u8, const B: u8>(&mut self) {
        assert!(C != A && C != B && A != B, "tdpbsud tmm{C}, tmm{A}, tmm{B}: a register used twice");
        let (c_rows, c_bytes) = self.shape(C, "tdpbsud (C)");
        let (a_rows, a_bytes) = self.shape(A, "tdpbsud (A)");
        let (b_rows, b_bytes) = self.shape(B, "tdpbsud (B)");
        assert!(
            c_rows == a_rows && c_bytes == b_bytes && a_bytes == 4 * b_rows && c_bytes % 4 == 0,
            "tdpbsud tmm{C}, tmm{A}, tmm{B}: shapes C {c_rows}×{c_bytes}, A {a_rows}×{a_bytes}, \
             B {b_rows}×{b_bytes} do not fit (C rows = A rows, C bytes = B bytes, A bytes = 4 · B rows)"
        );
        let (a, b) = (self.tiles[A as usize], self.tiles[B as usize]);
        let c = &mut self.tiles[C as usize];
        for m in 0..c_rows {
            for n in 0..c_bytes / 4 {
                let lane: [u8; 4] = c[m][4 * n..4 * n + 4].try_into().expect("4 bytes");
                let mut sum = i32::from_le_bytes(lane);
                for k in 0..a_bytes {
                    sum = sum.wrapping_add(a[m][k] as i8 as i32 * b[k / 4][4 * n + k % 4] as i32);
                }
                c[m][4 * n..4 * n + 4].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }

    unsafe fn release(&mut self) {
        *self = EmulatedTiles::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator's dot product on small known operands: signed A, unsigned B, i32 sums added
    /// to what C held, B's four-bytes-per-column layout.
    #[test]
    fn dot_product_follows_the_instruction() {
        let mut unit = EmulatedTiles::default();
        // C: 2 × (3 columns), A: 2 × 8 bytes, B: 2 rows × (3 columns × 4 bytes).
        let config = TileConfig::new(&[(2, 12), (2, 8), (2, 12)]);
        let a: [i8; 16] = [1, -2, 3, -4, 5, -6, 7, -8, -1, 0, 1, 0, 127, -128, 0, 0];
        let b: Vec<u8> = (0..24).map(|i| (i * 11 % 256) as u8).collect();
        let c0: [i32; 6] = [10, 20, 30, -40, -50, -60];
        let mut c = [0i32; 6];
        unsafe {
            unit.configure(&config);
            unit.load::<0>(c0.as_ptr() as *const u8, 12);
            unit.load::<1>(a.as_ptr() as *const u8, 8);
            unit.load::<2>(b.as_ptr(), 12);
            unit.dot_signed_unsigned::<0, 1, 2>();
            unit.store::<0>(c.as_mut_ptr() as *mut u8, 12);
        }
        for m in 0..2 {
            for n in 0..3 {
                let mut want = c0[3 * m + n];
                for k in 0..8 {
                    want += a[8 * m + k] as i32 * b[12 * (k / 4) + 4 * n + k % 4] as i32;
                }
                assert_eq!(c[3 * m + n], want, "C[{m}][{n}]");
            }
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn mismatched_shapes_fault() {
        let mut unit = EmulatedTiles::default();
        unsafe {
            unit.configure(&TileConfig::new(&[(2, 12), (2, 8), (3, 12)]));
            unit.dot_signed_unsigned::<0, 1, 2>();
        }
    }

    #[test]
    #[should_panic(expected = "before ldtilecfg")]
    fn tiles_need_a_configuration() {
        let mut unit = EmulatedTiles::default();
        unsafe { unit.zero::<0>() };
    }
}
