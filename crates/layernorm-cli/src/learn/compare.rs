//! `layernorm compare`: the seed's comparison table, measured. LayerNorm's output for a
//! sentence does not depend on the batch around it or on padding; BatchNorm's does.

use std::path::Path;

use anyhow::Result;
use layernorm::{batch_norm, layer_norm, Affine, Parallelism};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::diagrams::{self, font, Figure, BATCH_COLOR, LAYER_COLOR};
use crate::data::SplitMix64;

const EPS: f64 = 1e-5;
/// The fixed sentence: tokens × features.
const SEQ: usize = 10;
const EMB: usize = 16;
/// Batch sizes of experiment 1 (the smallest is the reference).
pub const BATCH_SIZES: [usize; 4] = [1, 2, 8, 32];
/// Pad tokens added in experiment 2 (the smallest is the reference).
pub const PAD_COUNTS: [usize; 4] = [0, 2, 10, 26];
/// Real tokens of the padded sentence, and sentences in its batch.
const REAL_TOKENS: usize = 6;
const PAD_BATCH: usize = 8;

/// Which normalization a result row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Layer,
    Batch,
}

impl Norm {
    pub fn name(self) -> &'static str {
        match self {
            Norm::Layer => "layer",
            Norm::Batch => "batch",
        }
    }
}

/// One measurement: how far the fixed sentence's outputs moved from the reference setting.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub experiment: &'static str,
    pub norm: Norm,
    pub setting: usize,
    pub max_abs_diff: f64,
}

fn sentence(rng: &mut SplitMix64, tokens: usize) -> Vec<f64> {
    // Each token with its own offset and scale, like real activations.
    (0..tokens)
        .flat_map(|_| {
            let (offset, scale) = (rng.normal() * 2.0, 0.5 + 2.0 * rng.uniform());
            (0..EMB)
                .map(|_| offset + scale * rng.normal())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Outputs of both norms for the tokens `span` of `batch` (rows of EMB features).
fn both(batch: &[f64], span: std::ops::Range<usize>) -> Result<[Vec<f64>; 2]> {
    let (ln, _) = layer_norm::forward(batch, EMB, Affine::none(), EPS, Parallelism::Sequential)?;
    let (bn, _) = batch_norm::forward_channels_last(batch, EMB, Affine::none(), EPS)?;
    let pick = |v: &[f64]| v[span.start * EMB..span.end * EMB].to_vec();
    Ok([pick(&ln), pick(&bn)])
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Rows for one experiment, from the outputs at each setting (the first is the reference).
fn rows(experiment: &'static str, settings: &[usize], outputs: &[[Vec<f64>; 2]]) -> Vec<Row> {
    let mut out = vec![];
    for (k, norm) in [Norm::Layer, Norm::Batch].into_iter().enumerate() {
        for (setting, o) in settings.iter().zip(outputs) {
            out.push(Row {
                experiment,
                norm,
                setting: *setting,
                max_abs_diff: max_abs_diff(&o[k], &outputs[0][k]),
            });
        }
    }
    out
}

/// Both experiments.
pub fn measure() -> Result<Vec<Row>> {
    let mut rng = SplitMix64(0xc0ffee);
    let fixed = sentence(&mut rng, SEQ);
    // 1: the fixed sentence first, then random others.
    let mut outputs = vec![];
    for &size in &BATCH_SIZES {
        let mut batch = fixed.clone();
        for _ in 1..size {
            batch.extend(sentence(&mut rng, SEQ));
        }
        outputs.push(both(&batch, 0..SEQ)?);
    }
    let mut all = rows("batch_size", &BATCH_SIZES, &outputs);
    // 2: a batch of sentences of REAL_TOKENS real tokens, each padded with zero vectors.
    let real: Vec<Vec<f64>> = (0..PAD_BATCH)
        .map(|_| sentence(&mut rng, REAL_TOKENS))
        .collect();
    let mut outputs = vec![];
    for &pads in &PAD_COUNTS {
        let batch: Vec<f64> = real
            .iter()
            .flat_map(|s| {
                s.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0.0, pads * EMB))
            })
            .collect();
        outputs.push(both(&batch, 0..REAL_TOKENS)?);
    }
    all.extend(rows("padding", &PAD_COUNTS, &outputs));
    Ok(all)
}

pub fn run(json: bool, out: &Path) -> Result<()> {
    let results = measure()?;
    if json {
        for r in &results {
            let object = serde_json::json!({
                "experiment": r.experiment, "norm": r.norm.name(), "setting": r.setting,
                "max_abs_diff": r.max_abs_diff,
            });
            outln!("{object}");
        }
    } else {
        let table = |experiment: &str, label: &str| -> Vec<String> {
            let of = |norm: Norm, setting: usize| {
                results
                    .iter()
                    .find(|r| r.experiment == experiment && r.norm == norm && r.setting == setting)
                    .map_or(f64::NAN, |r| r.max_abs_diff)
            };
            let settings = if experiment == "batch_size" {
                &BATCH_SIZES
            } else {
                &PAD_COUNTS
            };
            let mut lines = vec![format!(
                "  {label:<12} {:>14} {:>14}",
                "LayerNorm", "BatchNorm"
            )];
            for (k, &s) in settings.iter().enumerate() {
                let cells = if k == 0 {
                    ["(reference)".to_string(), "(reference)".to_string()]
                } else {
                    [fmt_diff(of(Norm::Layer, s)), fmt_diff(of(Norm::Batch, s))]
                };
                lines.push(format!("  {s:<12} {:>14} {:>14}", cells[0], cells[1]));
            }
            lines
        };
        outln!("The seed's table, measured: does a sentence's output depend on its batch?\n");
        outln!("Experiment 1 · batch size: one fixed sentence ({SEQ} tokens × {EMB} features)");
        outln!("normalized inside batches of 1, 2, 8 and 32 sentences (the others random).");
        outln!("Largest change of its outputs, against the batch of 1:\n");
        for line in table("batch_size", "batch size") {
            outln!("{line}");
        }
        outln!("\nExperiment 2 · padding: {PAD_BATCH} sentences of {REAL_TOKENS} real tokens, each padded");
        outln!("with pad tokens (zero vectors). Largest change of the real tokens' outputs,");
        outln!("against no padding:\n");
        for line in table("padding", "pad tokens") {
            outln!("{line}");
        }
        outln!("\nLayerNorm: exactly 0 — each token is normalized with its own statistics.");
        outln!("BatchNorm: the statistics of every feature mix in the other sentences and");
        outln!("the pads, so the same sentence comes out different.");
    }
    let paths = diagrams::write(&ComparePlot { rows: results }, out, "compare")?;
    if !json {
        outln!("\nPlot:");
        for p in &paths {
            outln!("  {}", p.display());
        }
    }
    Ok(())
}

/// "0 (bitwise)" for an exact zero, scientific otherwise.
fn fmt_diff(v: f64) -> String {
    if v == 0.0 {
        "0 (bitwise)".to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// The two experiments as line plots: LayerNorm flat on zero, BatchNorm rising.
struct ComparePlot {
    rows: Vec<Row>,
}

impl Figure for ComparePlot {
    fn size(&self) -> (u32, u32) {
        (1000, 420)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (left, right) = root.split_horizontally(500);
        let panels = [
            (
                &left,
                "batch_size",
                "batch size",
                "change vs. a batch of 1",
                SeriesLabelPosition::MiddleRight,
            ),
            (
                &right,
                "padding",
                "pad tokens per sentence",
                "change vs. no padding",
                SeriesLabelPosition::UpperLeft,
            ),
        ];
        for (area, experiment, x_desc, caption, legend) in panels {
            let rows: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.experiment == experiment)
                .collect();
            let x_max = rows.iter().map(|r| r.setting).max().unwrap_or(1) as f64;
            let y_max = rows
                .iter()
                .map(|r| r.max_abs_diff)
                .fold(0.0, f64::max)
                .max(1e-3)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, font(18))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max)
                .map_err(diagrams::plot_err)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc("largest |Δ output|")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.1}"))
                .label_style(font(13))
                .axis_desc_style(font(14))
                .draw()
                .map_err(diagrams::plot_err)?;
            for (norm, color, label) in [
                (Norm::Batch, BATCH_COLOR, "BatchNorm"),
                (Norm::Layer, LAYER_COLOR, "LayerNorm (always 0)"),
            ] {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.norm == norm)
                    .map(|r| (r.setting as f64, r.max_abs_diff))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
                    .map_err(diagrams::plot_err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                    .map_err(diagrams::plot_err)?;
            }
            chart
                .configure_series_labels()
                .position(legend)
                .label_font(font(14))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(diagrams::plot_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_is_exactly_unmoved_and_batch_norm_moves() {
        let rows = measure().unwrap();
        assert_eq!(rows.len(), 2 * (BATCH_SIZES.len() + PAD_COUNTS.len()));
        for r in &rows {
            let reference = r.setting == BATCH_SIZES[0] && r.experiment == "batch_size"
                || r.setting == PAD_COUNTS[0] && r.experiment == "padding";
            match r.norm {
                Norm::Layer => assert_eq!(r.max_abs_diff, 0.0, "{r:?}"),
                Norm::Batch if reference => assert_eq!(r.max_abs_diff, 0.0, "{r:?}"),
                // Outputs are O(1); a change of a tenth is unmistakable.
                Norm::Batch => assert!(r.max_abs_diff > 0.1, "{r:?}"),
            }
        }
    }
}
