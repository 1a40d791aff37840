//! The demo that `layernorm` runs with no arguments: the seed's two sentences, token by
//! token, then a seeded random (32, 50, 128) batch — per-token mean and std before and after.

use std::time::Instant;

use anyhow::Result;
use layernorm::LayerNorm;

use crate::data::{random_batch, BATCH_SHAPE, SENTENCES};

pub fn run() -> Result<()> {
    outln!("Layer Normalization: each token's embedding is normalized on its own,");
    outln!("  y = (x − mean) / √(variance + ε) · γ + β      (ε = 1e-5, γ = 1, β = 0)\n");
    seed_example()?;
    batch_example()?;
    Ok(())
}

fn seed_example() -> Result<()> {
    outln!("The seed's example: 2 sentences × 3 words × 2-dim embeddings, shape (2, 3, 2)\n");
    outln!(
        "  {:<15} {:<8} {:<14} {:>6} {:>6}   {:<16} {:>6} {:>6}",
        "sentence",
        "word",
        "embedding",
        "mean",
        "std",
        "normalized",
        "mean",
        "std"
    );
    let layer = LayerNorm::<f32>::new(&[2])?;
    let x: Vec<f32> = SENTENCES
        .iter()
        .flat_map(|s| s.embeddings.iter().flatten().copied())
        .collect();
    let (y, _) = layer.forward(&x, &[2, 3, 2])?;
    for (s, sentence) in SENTENCES.iter().enumerate() {
        for (w, word) in sentence.words.iter().enumerate() {
            let token = (s * 3 + w) * 2;
            let (before, after) = (&x[token..token + 2], &y[token..token + 2]);
            let (m0, s0) = mean_std(before);
            let (m1, s1) = mean_std(after);
            let label = if w == 0 {
                format!("\"{}\"", sentence.text)
            } else {
                String::new()
            };
            outln!(
                "  {:<15} {:<8} [{:>4.2}, {:>4.2}]   {:>6.3} {:>6.3}   [{:>6.3}, {:>6.3}] {:>6.3} {:>6.3}",
                label, word, before[0], before[1], m0, s0, after[0], after[1], m1, s1
            );
        }
    }
    outln!("\n  Every token ends with mean 0 and std ≈ 1 (a little under 1: ε is added to the");
    outln!("  variance). With only 2 values per token, they become −1 and +1.\n");
    Ok(())
}

fn batch_example() -> Result<()> {
    let [b, s, e] = BATCH_SHAPE;
    let x = random_batch(BATCH_SHAPE, 0x5eed);
    let layer = LayerNorm::<f32>::new(&[e])?;
    let start = Instant::now();
    let (y, _) = layer.forward(&x, &BATCH_SHAPE)?;
    let first = start.elapsed();
    let mut times = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let out = layer.forward(&x, &BATCH_SHAPE)?;
        times.push(start.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    let median = times[times.len() / 2];

    outln!(
        "A seeded random batch of shape ({b}, {s}, {e}): {} tokens of {e} values\n",
        b * s
    );
    outln!(
        "  {:<8} {:>22} {:>22}",
        "",
        "per-token mean",
        "per-token std"
    );
    outln!("  {:<8} {:>22} {:>22}", "", "min … max", "min … max");
    for (label, data) in [("before", &x), ("after", &y)] {
        let stats: Vec<(f64, f64)> = data.chunks(e).map(mean_std).collect();
        let range = |f: fn(&(f64, f64)) -> f64| {
            // Round away a −0.0000 from a mean of −1e-9.
            let v = stats
                .iter()
                .map(f)
                .map(|v| if v.abs() < 5e-5 { 0.0 } else { v });
            let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
            format!("{lo:>9.4} … {hi:>8.4}")
        };
        outln!("  {label:<8} {:>22} {:>22}", range(|p| p.0), range(|p| p.1));
    }
    let bytes = 2.0 * (x.len() * std::mem::size_of::<f32>()) as f64;
    outln!(
        "\n  forward: {:.1} µs median of 21 runs (first call {:.1} µs), {:.1} GB/s read + written",
        median.as_secs_f64() * 1e6,
        first.as_secs_f64() * 1e6,
        bytes / median.as_secs_f64() / 1e9
    );
    outln!("\nNext: `layernorm explain` walks through the four steps with diagrams, and");
    outln!("`layernorm compare` measures why Transformers prefer LayerNorm to BatchNorm.");
    Ok(())
}

/// Mean and (biased) standard deviation, in f64.
fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}
