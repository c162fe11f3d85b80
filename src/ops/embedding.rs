//! Token embedding: gathers one row of the embedding matrix per token.

use crate::model::weights::WeightMatrix;

/// `out[t] = table[token_ids[t]]`; out is `[token_ids.len(), table.cols]`.
/// Token ids are validated by the engine before they reach a step.
pub fn embedding(table: &WeightMatrix, token_ids: &[u32], out: &mut [f32]) {
    let dim = table.cols;
    assert_eq!(out.len(), token_ids.len() * dim, "embedding output must be [tokens, hidden]");
    for (row, &id) in out.chunks_exact_mut(dim).zip(token_ids) {
        assert!((id as usize) < table.rows, "token id {id} out of range for a vocabulary of {}", table.rows);
        table.row_to_f32(id as usize, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn gathers_rows_in_token_order() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [4, 3]
        let table = WeightMatrix::from_f16(4, 3, values.iter().map(|&v| f16::from_f32(v)).collect());
        let mut out = vec![f32::NAN; 9];
        embedding(&table, &[3, 0, 3], &mut out);
        assert_eq!(out, vec![9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0]);
    }
}
