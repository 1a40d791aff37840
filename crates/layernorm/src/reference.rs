//! Slow, simple f64 reference implementations: the oracle for tests, benches and the CLI.
//!
//! Deliberately independent of the kernels: plain loops, Neumaier-compensated sums (so the
//! reference stays exact-ish where a naive f64 sum would not), no lanes, no threads.
//!
//! An oracle, not an API: arguments are not validated. `cols` must be at least 1 and divide
//! `x.len()`, and `weight`, `bias` and `dy` must have the lengths the formulas need; anything
//! else panics (or, for a longer `dy`, is ignored).

/// A Neumaier-compensated sum.
pub fn compensated_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    sum + comp
}

/// Per-row `(mean, rstd)` of `x` viewed as rows of `cols`.
pub fn layer_norm_stats(x: &[f64], cols: usize, eps: f64) -> Vec<(f64, f64)> {
    x.chunks_exact(cols)
        .map(|row| {
            let n = cols as f64;
            let mean = compensated_sum(row.iter().copied()) / n;
            let var = compensated_sum(row.iter().map(|&v| (v - mean) * (v - mean))) / n;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect()
}

/// LayerNorm forward in f64: `(y, mean, rstd)`.
pub fn layer_norm_forward(
    x: &[f64],
    cols: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stats = layer_norm_stats(x, cols, eps);
    let mut y = Vec::with_capacity(x.len());
    for (row, &(mean, rstd)) in x.chunks_exact(cols).zip(&stats) {
        for (j, &v) in row.iter().enumerate() {
            let xhat = (v - mean) * rstd;
            let w = weight.map_or(1.0, |w| w[j]);
            let b = bias.map_or(0.0, |b| b[j]);
            y.push(xhat * w + b);
        }
    }
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// LayerNorm backward in f64, statistics recomputed from `x`: `(dx, dweight, dbias)`.
pub fn layer_norm_backward(
    dy: &[f64],
    x: &[f64],
    cols: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stats = layer_norm_stats(x, cols, eps);
    let n = cols as f64;
    let mut dx = Vec::with_capacity(x.len());
    let mut dweight = vec![Vec::new(); cols];
    let mut dbias = vec![Vec::new(); cols];
    for ((row, drow), &(mean, rstd)) in x.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(&stats)
    {
        let xhat: Vec<f64> = row.iter().map(|&v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..cols)
            .map(|j| drow[j] * weight.map_or(1.0, |w| w[j]))
            .collect();
        let mean_g = compensated_sum(g.iter().copied()) / n;
        let mean_gx = compensated_sum(g.iter().zip(&xhat).map(|(g, h)| g * h)) / n;
        for j in 0..cols {
            dx.push(rstd * (g[j] - mean_g - xhat[j] * mean_gx));
            dweight[j].push(drow[j] * xhat[j]);
            dbias[j].push(drow[j]);
        }
    }
    let sum_each = |cols: Vec<Vec<f64>>| cols.into_iter().map(compensated_sum).collect();
    (dx, sum_each(dweight), sum_each(dbias))
}

/// RMSNorm forward in f64: `(y, rstd)`.
pub fn rms_norm_forward(
    x: &[f64],
    cols: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut y = Vec::with_capacity(x.len());
    let mut rstds = Vec::with_capacity(x.len() / cols);
    for row in x.chunks_exact(cols) {
        let mean_sq = compensated_sum(row.iter().map(|v| v * v)) / cols as f64;
        let rstd = 1.0 / (mean_sq + eps).sqrt();
        y.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| v * rstd * weight.map_or(1.0, |w| w[j])),
        );
        rstds.push(rstd);
    }
    (y, rstds)
}

/// RMSNorm backward in f64, `rstd` recomputed from `x`: `(dx, dweight)`.
pub fn rms_norm_backward(
    dy: &[f64],
    x: &[f64],
    cols: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (_, rstds) = rms_norm_forward(x, cols, None, eps);
    let n = cols as f64;
    let mut dx = Vec::with_capacity(x.len());
    let mut dweight = vec![Vec::new(); cols];
    for ((row, drow), &rstd) in x.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(&rstds) {
        let xhat: Vec<f64> = row.iter().map(|v| v * rstd).collect();
        let g: Vec<f64> = (0..cols)
            .map(|j| drow[j] * weight.map_or(1.0, |w| w[j]))
            .collect();
        let mean_gx = compensated_sum(g.iter().zip(&xhat).map(|(g, h)| g * h)) / n;
        for j in 0..cols {
            dx.push(rstd * (g[j] - xhat[j] * mean_gx));
            dweight[j].push(drow[j] * xhat[j]);
        }
    }
    (dx, dweight.into_iter().map(compensated_sum).collect())
}
