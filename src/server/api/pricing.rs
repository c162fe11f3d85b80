//! Per-token prices: usage is counted in tokens and priced per million input and output tokens.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
}

/// The hosted Llama-2-70b-chat endpoint's prices, the default for every model.
pub const DEFAULT_PRICES: Prices = Prices { input_per_million_usd: 0.64, output_per_million_usd: 0.80 };

impl Prices {
    pub fn cost_usd(&self, input_tokens: usize, output_tokens: usize) -> f64 {
        (input_tokens as f64 * self.input_per_million_usd + output_tokens as f64 * self.output_per_million_usd) / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_million_of_each() {
        assert!((DEFAULT_PRICES.cost_usd(1_000_000, 1_000_000) - 1.44).abs() < 1e-12);
        assert!((DEFAULT_PRICES.cost_usd(100, 50) - 0.000104).abs() < 1e-12);
    }
}
