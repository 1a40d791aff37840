//! `layernorm explain`: the seed's four steps, token by token, then BatchNorm on the same
//! batch, side by side — with a diagram of what each one averages over and histograms of a
//! real-sized batch before and after.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use layernorm::{batch_norm, layer_norm, Affine, Parallelism};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::diagrams::{self, bold, font, Figure, BATCH_COLOR, LAYER_COLOR};
use crate::data::{random_batch, BATCH_SHAPE, SENTENCES};
use crate::npy;

/// ε used throughout (PyTorch's default; Keras' is 1e-3).
const EPS: f64 = 1e-5;
/// At most this many tokens and features are printed (the rest are summarized).
const MAX_TOKENS: usize = 12;
const MAX_FEATURES: usize = 4;

/// A (batch, seq, emb) batch with labels for its tokens.
pub struct Batch {
    pub shape: [usize; 3],
    pub x: Vec<f64>,
    /// "sentence word" labels, one per token.
    pub labels: Vec<(String, String)>,
}

impl Batch {
    /// The seed's two sentences.
    pub fn seed() -> Self {
        // The seed writes decimals (0.1, 0.5, …): take the f32's shortest decimal, so the
        // walk-through computes on 0.1 itself rather than on f32's nearest 0.10000000149.
        let decimal = |v: f32| v.to_string().parse::<f64>().unwrap_or(f64::from(v));
        let x = SENTENCES
            .iter()
            .flat_map(|s| s.embeddings.iter().flatten().map(move |&v| decimal(v)))
            .collect();
        let labels = SENTENCES
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.words
                    .iter()
                    .map(move |w| ((i + 1).to_string(), w.to_string()))
            })
            .collect();
        Batch {
            shape: [2, 3, 2],
            x,
            labels,
        }
    }

    /// A (batch, seq, emb) tensor from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tensor = npy::read(path)?;
        let shape: [usize; 3] = match tensor.shape() {
            &[b, s, e] if b > 0 && s > 0 && e > 0 => [b, s, e],
            other => bail!(
                "{}: expected a (batch, seq, emb) tensor, got shape {other:?}",
                path.display()
            ),
        };
        let x = tensor.to_f64();
        let labels = (0..shape[0] * shape[1])
            .map(|t| {
                (
                    (t / shape[1] + 1).to_string(),
                    format!("token {}", t % shape[1] + 1),
                )
            })
            .collect();
        Ok(Batch { shape, x, labels })
    }

    fn emb(&self) -> usize {
        self.shape[2]
    }
}

/// Every number `explain` shows, computed by the library.
pub struct Explanation {
    pub batch: Batch,
    /// Per token: mean and (biased) variance over its features.
    pub token_mean: Vec<f64>,
    pub token_var: Vec<f64>,
    /// x̂ (γ = 1, β = 0).
    pub xhat: Vec<f64>,
    /// The example γ and β, and y = γ·x̂ + β with them.
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub y_affine: Vec<f64>,
    /// Per feature: BatchNorm's mean and variance across every token, and its output.
    pub feature_mean: Vec<f64>,
    pub feature_var: Vec<f64>,
    pub y_batch: Vec<f64>,
}

/// Runs both normalizations on `batch`.
pub fn explain(batch: Batch) -> Result<Explanation> {
    let e = batch.emb();
    let par = Parallelism::Sequential;
    let (xhat, stats) = layer_norm::forward(&batch.x, e, Affine::none(), EPS, par)?;
    // var = 1/rstd² − ε, from the library's own statistics.
    let token_var = stats.rstd.iter().map(|r| 1.0 / (r * r) - EPS).collect();
    let gamma: Vec<f64> = (0..e).map(|j| [2.0, 0.5, 1.5, 1.0][j % 4]).collect();
    let beta: Vec<f64> = (0..e).map(|j| [0.1, -0.1, 0.0, 0.2][j % 4]).collect();
    let (y_affine, _) =
        layer_norm::forward(&batch.x, e, Affine::scale_shift(&gamma, &beta), EPS, par)?;
    let (y_batch, bstats) = batch_norm::forward_channels_last(&batch.x, e, Affine::none(), EPS)?;
    let feature_var = bstats.rstd.iter().map(|r| 1.0 / (r * r) - EPS).collect();
    Ok(Explanation {
        token_mean: stats.mean,
        token_var,
        xhat,
        gamma,
        beta,
        y_affine,
        feature_mean: bstats.mean,
        feature_var,
        y_batch,
        batch,
    })
}

/// `[0.100, 0.500]`, at most `MAX_FEATURES` values.
fn vector(v: &[f64], decimals: usize) -> String {
    let shown: Vec<String> = v
        .iter()
        .take(MAX_FEATURES)
        .map(|x| format!("{x:.decimals$}"))
        .collect();
    let more = if v.len() > MAX_FEATURES { ", …" } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

impl Explanation {
    /// The walk-through, as text that fits 80 columns.
    pub fn render(&self) -> String {
        let b = &self.batch;
        let [nb, ns, e] = b.shape;
        let tokens = nb * ns;
        let shown = tokens.min(MAX_TOKENS);
        let row = |t: usize| &b.x[t * e..(t + 1) * e];
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "Layer Normalization, step by step");
        let _ = writeln!(
            w,
            "input: (batch {nb}, seq {ns}, emb {e}) = {nb} sentences × {ns} tokens × {e} features\n"
        );
        let _ = writeln!(
            w,
            "LayerNorm treats every token on its own, over its {e} features.\n"
        );
        let _ = writeln!(
            w,
            "Step 1 · mean of each token      Step 2 · variance: mean of (x − mean)²"
        );
        let _ = writeln!(
            w,
            "  {:<4} {:<9} {:<26} {:>9} {:>10}",
            "sent", "token", "x", "mean", "variance"
        );
        for t in 0..shown {
            let (s, word) = &b.labels[t];
            let _ = writeln!(
                w,
                "  {s:<4} {word:<9} {:<26} {:>9.4} {:>10.6}",
                vector(row(t), 3),
                self.token_mean[t],
                self.token_var[t]
            );
        }
        let _ = writeln!(
            w,
            "\nStep 3 · normalize: x̂ = (x − mean) / √(variance + ε),  ε = {EPS:e}"
        );
        let _ = writeln!(
            w,
            "  {:<4} {:<9} {:<26}",
            "sent", "token", "x̂ (mean 0, variance ≈ 1)"
        );
        for t in 0..shown {
            let (s, word) = &b.labels[t];
            let _ = writeln!(
                w,
                "  {s:<4} {word:<9} {}",
                vector(&self.xhat[t * e..(t + 1) * e], 4)
            );
        }
        let _ = writeln!(
            w,
            "\nStep 4 · scale and shift with the learnable γ and β: y = γ·x̂ + β"
        );
        let _ = writeln!(
            w,
            "  the defaults γ = 1, β = 0 leave y = x̂ (the table above);"
        );
        let _ = writeln!(
            w,
            "  with γ = {} and β = {}:",
            vector(&self.gamma, 1),
            vector(&self.beta, 1)
        );
        for t in 0..shown {
            let (s, word) = &b.labels[t];
            let _ = writeln!(
                w,
                "  {s:<4} {word:<9} {}",
                vector(&self.y_affine[t * e..(t + 1) * e], 4)
            );
        }
        let _ = writeln!(
            w,
            "  γ stretches each feature, β moves it: the network learns both.\n"
        );

        let _ = writeln!(
            w,
            "BatchNorm on the same batch: one mean and variance per feature,"
        );
        let _ = writeln!(
            w,
            "taken across all {tokens} tokens of all {nb} sentences.\n"
        );
        let _ = writeln!(
            w,
            "  {:<8} {:<40} {:>9} {:>10}",
            "feature", "values it averages", "mean", "variance"
        );
        for (f, (mean, var)) in self
            .feature_mean
            .iter()
            .zip(&self.feature_var)
            .enumerate()
            .take(MAX_FEATURES)
        {
            let values: Vec<String> = (0..tokens.min(8))
                .map(|t| format!("{:.2}", b.x[t * e + f]))
                .collect();
            let more = if tokens > 8 { " …" } else { "" };
            let _ = writeln!(
                w,
                "  {f:<8} {:<40} {mean:>9.4} {var:>10.6}",
                format!("{}{more}", values.join(" "))
            );
        }
        let _ = writeln!(w, "\nSide by side, the normalized tokens:");
        let _ = writeln!(
            w,
            "  {:<4} {:<9} {:<30} {:<30}",
            "sent", "token", "LayerNorm (per token)", "BatchNorm (per feature)"
        );
        for t in 0..shown {
            let (s, word) = &b.labels[t];
            let span = t * e..(t + 1) * e;
            let _ = writeln!(
                w,
                "  {s:<4} {word:<9} {:<30} {:<30}",
                vector(&self.xhat[span.clone()], 3),
                vector(&self.y_batch[span], 3)
            );
        }
        if tokens > shown {
            let _ = writeln!(w, "  … ({} more tokens)", tokens - shown);
        }
        let _ = writeln!(
            w,
            "\nLayerNorm's row for a token uses only that token; BatchNorm's depends on"
        );
        let _ = writeln!(
            w,
            "every other token in the batch (try `layernorm compare`)."
        );
        out.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn run(input: Option<&Path>, out: &Path) -> Result<()> {
    let batch = match input {
        Some(path) => Batch::from_file(path)?,
        None => Batch::seed(),
    };
    let explanation = explain(batch)?;
    outln!("{}\n", explanation.render());
    let block = diagrams::write(&Block::from(&explanation), out, "layernorm_vs_batchnorm")?;
    let hist = diagrams::write(&Histograms::seed_batch()?, out, "activations_before_after")?;
    outln!("Diagrams:");
    for path in block.iter().chain(&hist) {
        outln!("  {}", path.display());
    }
    Ok(())
}

/// Diagram (a): the batch as grids (one per sentence: tokens × features), twice — with the
/// cells LayerNorm averages for one token, and the cells BatchNorm averages for one feature.
pub struct Block {
    shape: [usize; 3],
    x: Vec<f64>,
    labels: Vec<(String, String)>,
    /// The statistics of the highlighted token and of the highlighted feature.
    notes: [String; 2],
}

/// The token the diagram highlights: the second word of the first sentence.
fn highlighted_token(seq: usize) -> usize {
    seq.min(2) - 1
}

impl From<&Explanation> for Block {
    fn from(e: &Explanation) -> Self {
        // Draw at most 4 sentences × 6 tokens × 6 features.
        let [b, s, f] = e.batch.shape;
        let shape = [b.min(4), s.min(6), f.min(6)];
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                let t = i * s + j;
                x.extend_from_slice(&e.batch.x[t * f..t * f + shape[2]]);
                labels.push(e.batch.labels[t].clone());
            }
        }
        let t = highlighted_token(s);
        let tokens = b * s;
        let notes = [
            format!(
                "→ mean {:.3}, variance {:.4}",
                e.token_mean[t], e.token_var[t]
            ),
            format!(
                "feature 0 over all {tokens} tokens: mean {:.3}, variance {:.4}",
                e.feature_mean[0], e.feature_var[0]
            ),
        ];
        Block {
            shape,
            x,
            labels,
            notes,
        }
    }
}

impl Figure for Block {
    fn size(&self) -> (u32, u32) {
        let [b, s, _] = self.shape;
        (1000, (130 + b * (s * 34 + 40)) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let [nb, ns, nf] = self.shape;
        let (w, _) = self.size();
        let panels = root.split_horizontally(w / 2);
        let titles = [
            ("LayerNorm: one token, all its features", LAYER_COLOR),
            ("BatchNorm: one feature, every token", BATCH_COLOR),
        ];
        for (p, (area, (title, color))) in [panels.0, panels.1].iter().zip(titles).enumerate() {
            area.draw(&Text::new(title, (20, 20), bold(20).color(&color)))
                .map_err(diagrams::plot_err)?;
            let note = if p == 0 {
                "mean and variance of the highlighted row"
            } else {
                "mean and variance of the highlighted column"
            };
            area.draw(&Text::new(note, (20, 48), font(15)))
                .map_err(diagrams::plot_err)?;
            let cell = (70i32, 34i32);
            let left = 130;
            let mut top = 90;
            for i in 0..nb {
                area.draw(&Text::new(
                    format!("sentence {}", i + 1),
                    (20, top),
                    bold(15),
                ))
                .map_err(diagrams::plot_err)?;
                for f in 0..nf {
                    let label = format!("feature {f}");
                    let x = left + f as i32 * cell.0 + 4;
                    area.draw(&Text::new(label, (x, top + 2), font(11)))
                        .map_err(diagrams::plot_err)?;
                }
                top += 22;
                for j in 0..ns {
                    let t = i * ns + j;
                    let y0 = top + j as i32 * cell.1;
                    let word = &self.labels[t].1;
                    area.draw(&Text::new(word.clone(), (20, y0 + 10), font(14)))
                        .map_err(diagrams::plot_err)?;
                    for f in 0..nf {
                        // LayerNorm: token 2 of sentence 1; BatchNorm: feature 0 everywhere.
                        let lit = if p == 0 {
                            i == 0 && j == highlighted_token(ns)
                        } else {
                            f == 0
                        };
                        let x0 = left + f as i32 * cell.0;
                        let fill = if lit {
                            color.mix(0.55)
                        } else {
                            RGBColor(235, 235, 235).mix(1.0)
                        };
                        let rect = Rectangle::new(
                            [(x0, y0), (x0 + cell.0 - 4, y0 + cell.1 - 4)],
                            fill.filled(),
                        );
                        area.draw(&rect).map_err(diagrams::plot_err)?;
                        let value = format!("{:.2}", self.x[t * nf + f]);
                        area.draw(&Text::new(value, (x0 + 14, y0 + 8), font(14)))
                            .map_err(diagrams::plot_err)?;
                    }
                }
                if p == 0 && i == 0 {
                    // The highlighted row's statistics, to its right.
                    let y = top + highlighted_token(ns) as i32 * cell.1 + 8;
                    let x = left + nf as i32 * cell.0 + 8;
                    area.draw(&Text::new(
                        self.notes[0].clone(),
                        (x, y),
                        bold(14).color(&color),
                    ))
                    .map_err(diagrams::plot_err)?;
                }
                top += ns as i32 * cell.1 + 18;
            }
            if p == 1 {
                area.draw(&Text::new(
                    format!("↑ {}", self.notes[1]),
                    (left - 110, top),
                    bold(14).color(&color),
                ))
                .map_err(diagrams::plot_err)?;
            }
        }
        Ok(())
    }
}

/// Diagram (b): histograms of every activation of the seed-sized (32, 50, 128) batch, before
/// and after LayerNorm, on the same axis, with the spread of the per-token statistics.
pub struct Histograms {
    before: Vec<f64>,
    after: Vec<f64>,
    cols: usize,
}

impl Histograms {
    pub fn seed_batch() -> Result<Self> {
        let x = random_batch(BATCH_SHAPE, 0x5eed);
        let cols = BATCH_SHAPE[2];
        let (y, _) = layer_norm::forward(&x, cols, Affine::none(), EPS, Parallelism::Rayon)?;
        Ok(Histograms {
            before: x.iter().map(|&v| f64::from(v)).collect(),
            after: y.iter().map(|&v| f64::from(v)).collect(),
            cols,
        })
    }

    /// "token means −9.8 … 10.4, stds 0.46 … 4.99" for `values`.
    fn token_spread(&self, values: &[f64]) -> String {
        let stats: Vec<(f64, f64)> = values
            .chunks(self.cols)
            .map(|t| {
                let n = t.len() as f64;
                let mean = t.iter().sum::<f64>() / n;
                let var = t.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                (mean, var.sqrt())
            })
            .collect();
        let range = |f: fn(&(f64, f64)) -> f64| {
            let lo = stats.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = stats.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
            // Round away a −0.00 from a mean of −1e-9.
            let clean = |v: f64| if v.abs() < 5e-3 { 0.0 } else { v };
            format!("{:.2} … {:.2}", clean(lo), clean(hi))
        };
        format!("token means {}, stds {}", range(|s| s.0), range(|s| s.1))
    }
}

/// Counts of `values` in `bins` equal bins over [lo, hi).
fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u32> {
    let mut counts = vec![0u32; bins];
    for &v in values {
        if v >= lo && v < hi {
            counts[((v - lo) / (hi - lo) * bins as f64) as usize % bins] += 1;
        }
    }
    counts
}

impl Figure for Histograms {
    fn size(&self) -> (u32, u32) {
        (1000, 440)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (left, right) = root.split_horizontally(500);
        let range = 24.0;
        let panels = [
            (
                &left,
                &self.before,
                "before: every token its own mean and spread",
                RGBColor(110, 110, 110),
            ),
            (
                &right,
                &self.after,
                "after LayerNorm: every token mean 0, std 1",
                LAYER_COLOR,
            ),
        ];
        for (area, values, title, color) in panels {
            let bins = 96;
            let counts = histogram(values, -range, range, bins);
            let top = f64::from(*counts.iter().max().unwrap_or(&1)) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, font(17))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(-range..range, 0.0..top)
                .map_err(diagrams::plot_err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("activation value")
                .y_desc("how many of the 204,800 values")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(font(13))
                .axis_desc_style(font(14))
                .draw()
                .map_err(diagrams::plot_err)?;
            let width = 2.0 * range / bins as f64;
            chart
                .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                    let x0 = -range + i as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, f64::from(c))],
                        color.mix(0.75).filled(),
                    )
                }))
                .map_err(diagrams::plot_err)?;
            let note = self.token_spread(values);
            chart
                .draw_series([Text::new(note, (-range * 0.95, top * 0.95), font(13))])
                .map_err(diagrams::plot_err)?;
        }
        Ok(())
    }
}

/// Where `run` writes, given `--out`.
pub fn out_dir(out: Option<&Path>) -> PathBuf {
    out.map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent f64 computation of the seed's numbers, written out plainly.
    #[test]
    fn explained_numbers_match_an_f64_reference() {
        let ex = explain(Batch::seed()).unwrap();
        let x = &ex.batch.x;
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{what}: {a} vs {b}"
            )
        };
        for t in 0..6 {
            let row = &x[2 * t..2 * t + 2];
            let mean = (row[0] + row[1]) / 2.0;
            let var = ((row[0] - mean).powi(2) + (row[1] - mean).powi(2)) / 2.0;
            close(ex.token_mean[t], mean, "token mean");
            // The library reports var through rstd; 1e-12 covers that round trip.
            assert!((ex.token_var[t] - var).abs() <= 1e-12, "token var {t}");
            for (j, &v) in row.iter().enumerate() {
                let xhat = (v - mean) / (var + EPS).sqrt();
                close(ex.xhat[2 * t + j], xhat, "x̂");
                close(ex.y_affine[2 * t + j], ex.gamma[j] * xhat + ex.beta[j], "y");
            }
        }
        for f in 0..2 {
            let column: Vec<f64> = (0..6).map(|t| x[2 * t + f]).collect();
            let mean = column.iter().sum::<f64>() / 6.0;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
            close(ex.feature_mean[f], mean, "feature mean");
            assert!((ex.feature_var[f] - var).abs() <= 1e-12, "feature var {f}");
            for (t, &v) in column.iter().enumerate() {
                let want = (v - mean) / (var + EPS).sqrt();
                close(ex.y_batch[2 * t + f], want, "BatchNorm y");
            }
        }
        // The seed's "I" = [0.1, 0.5]: mean 0.3, variance 0.04.
        close(ex.token_mean[0], 0.3, "I mean");
        assert!((ex.token_var[0] - 0.04).abs() < 1e-12);
    }

    #[test]
    fn the_walkthrough_prints_those_numbers_in_80_columns() {
        let ex = explain(Batch::seed()).unwrap();
        let text = ex.render();
        assert!(
            text.lines().all(|l| l.chars().count() <= 80),
            "a line is wider than 80 columns"
        );
        for needle in [
            "[0.100, 0.500]",
            "0.3000",
            "0.040000",
            "[-0.9999, 0.9999]",
            "γ = [2.0, 0.5] and β = [0.1, -0.1]",
            "0.5000   0.103333",
            "Step 4",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Each printed mean is the library's, rounded.
        for (t, m) in ex.token_mean.iter().enumerate() {
            assert!(text.contains(&format!("{m:.4}")), "token {t} mean");
        }
    }
}
