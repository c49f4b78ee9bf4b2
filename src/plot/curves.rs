//! The training curves of a run, as one image with three panels over the steps: the loss
//! (each logged value and a smoothed line, on a log scale when it is positive), the learning
//! rate, and the gradient norm before clipping. Redrawn from metrics.csv's rows at each log
//! row, so it shows the run so far.

use image::RgbImage;
use plotters::prelude::*;

use super::text;
use crate::error::{Error, Result};

/// One logged row of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Size of the picture.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 600;
/// Smoothing of the loss over logged rows (see `smoothed`).
const BETA: f64 = 0.8;
/// Pixels left of each panel for its y labels, above it for its title, below the last for
/// the step labels.
const LEFT: u32 = 64;
const TOP: u32 = 16;
const BOTTOM: u32 = 14;

const INK: [u8; 3] = [40, 40, 40];
const GRID: RGBColor = RGBColor(225, 225, 225);
const RAW: RGBColor = RGBColor(175, 175, 175);
const SMOOTH: RGBColor = RGBColor(31, 90, 180);
const LR: RGBColor = RGBColor(40, 140, 60);
const NORM: RGBColor = RGBColor(200, 100, 30);

/// The loss smoothed over logged rows, debiased as TensorBoard does:
///   s_k = beta s_(k-1) + (1 - beta) loss_k,  s_0 = 0,  smoothed_k = s_k / (1 - beta^k),
/// k = 1, 2, ... (beta = 0.8), so the first value is the first loss.
pub fn smoothed(losses: &[f64]) -> Vec<f64> {
    let mut s = 0.0;
    let mut decay = 1.0;
    losses
        .iter()
        .map(|&x| {
            s = BETA * s + (1.0 - BETA) * x;
            decay *= BETA;
            s / (1.0 - decay)
        })
        .collect()
}

/// One panel: its title, its lines (colour, values per row), and whether to use a log scale.
struct Panel {
    title: &'static str,
    lines: Vec<(RGBColor, Vec<f64>)>,
    log: bool,
}

/// The three panels of `rows` (at least one row) as a WIDTH x HEIGHT image.
pub fn training_curves(rows: &[Row]) -> Result<RgbImage> {
    if rows.is_empty() {
        return Err(Error::Invalid("no rows to plot".into()));
    }
    let col = |f: fn(&Row) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let loss = col(|r| r.loss);
    let positive = |v: &[f64]| v.iter().all(|&x| x > 0.0 && x.is_finite());
    let panels = [
        Panel {
            title: "loss: logged (grey), smoothed (blue)",
            log: positive(&loss),
            lines: vec![(RAW, loss.clone()), (SMOOTH, smoothed(&loss))],
        },
        Panel {
            title: "learning rate",
            log: false,
            lines: vec![(LR, col(|r| r.lr))],
        },
        Panel {
            title: "gradient norm (before clipping)",
            log: positive(&col(|r| r.grad_norm)),
            lines: vec![(NORM, col(|r| r.grad_norm))],
        },
    ];
    let steps: Vec<f64> = rows.iter().map(|r| r.step as f64).collect();
    let (x0, x1) = (steps[0].min(0.0), steps[steps.len() - 1].max(1.0));
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    let mut labels: Vec<(i64, i64, String)> = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let areas = root.split_evenly((panels.len(), 1));
        for (k, (panel, area)) in panels.iter().zip(&areas).enumerate() {
            let last = k + 1 == panels.len();
            let ys = |v: f64| if panel.log { v.log10() } else { v };
            let all: Vec<f64> = panel
                .lines
                .iter()
                .flat_map(|(_, v)| v.iter().map(|&y| ys(y)))
                .filter(|y| y.is_finite())
                .collect();
            let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = match (lo.is_finite(), hi - lo) {
                (false, _) => (0.0, 1.0),
                // A non-negative linear quantity (the learning rate) starts at 0.
                (true, d) if !panel.log && lo >= 0.0 && d > 1e-12 => (0.0, hi + 0.05 * d),
                (true, d) if d > 1e-12 => (lo - 0.05 * d, hi + 0.05 * d),
                (true, _) => (lo - 0.5, hi + 0.5),
            };
            let mut chart = ChartBuilder::on(area)
                .margin_top(TOP)
                .margin_right(12)
                .margin_bottom(if last { 4 } else { 2 })
                .y_label_area_size(LEFT)
                .x_label_area_size(if last { BOTTOM } else { 0 })
                .build_cartesian_2d(x0..x1, lo..hi)
                .map_err(draw_error)?;
            let yticks = [lo, (lo + hi) / 2.0, hi];
            for y in yticks {
                let grid = PathElement::new(vec![(x0, y), (x1, y)], GRID);
                chart.plotting_area().draw(&grid).map_err(draw_error)?;
                let (px, py) = chart.backend_coord(&(x0, y));
                let value = if panel.log { 10f64.powf(y) } else { y };
                let label = text::number(value);
                let w = text::width(&label) as i64;
                labels.push((px as i64 - w - 4, py as i64 - 4, label));
            }
            for (colour, values) in &panel.lines {
                let points = steps
                    .iter()
                    .zip(values)
                    .map(|(&x, &y)| (x, ys(y)))
                    .filter(|(_, y)| y.is_finite());
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(draw_error)?;
            }
            let frame = Rectangle::new([(x0, lo), (x1, hi)], INK_STYLE);
            chart.plotting_area().draw(&frame).map_err(draw_error)?;
            let (tx, ty) = chart.backend_coord(&(x0, hi));
            let scale = if panel.log { ", log scale" } else { "" };
            labels.push((tx as i64, ty as i64 - 12, format!("{}{scale}", panel.title)));
            if last {
                for x in [x0, (x0 + x1) / 2.0, x1] {
                    let (px, py) = chart.backend_coord(&(x, lo));
                    let label = text::number(x.round());
                    let w = text::width(&label) as i64;
                    let left = (px as i64 - w / 2).clamp(0, (WIDTH as i64) - w);
                    labels.push((left, py as i64 + 4, label));
                }
                let (px, py) = chart.backend_coord(&(x1, lo));
                labels.push((px as i64 - 4 * 8 - 40, py as i64 + 4, "step".into()));
            }
        }
        root.present().map_err(draw_error)?;
    }
    let mut img = RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| Error::Invalid("plot buffer of the wrong size".into()))?;
    for (x, y, label) in labels {
        text::draw(&mut img, x, y, &label, INK);
    }
    Ok(img)
}

const INK_STYLE: ShapeStyle = ShapeStyle {
    color: RGBAColor(INK[0], INK[1], INK[2], 1.0),
    filled: false,
    stroke_width: 1,
};

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Invalid(format!("cannot draw the training curves: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// s_1 = 0.2 x1 / 0.2 = x1; s_2 = (0.16 x1 + 0.2 x2) / 0.36.
    #[test]
    fn smoothing_is_a_debiased_moving_average() {
        let s = smoothed(&[1.0, 2.0, 2.0]);
        assert!((s[0] - 1.0).abs() < 1e-12);
        assert!((s[1] - (0.16 + 0.4) / 0.36).abs() < 1e-12);
        let s3 = (0.128 + 0.32 + 0.4) / (1.0 - 0.512);
        assert!((s[2] - s3).abs() < 1e-12);
        assert!(smoothed(&[]).is_empty());
    }

    fn count(img: &RgbImage, colour: RGBColor, rows: std::ops::Range<u32>) -> usize {
        img.enumerate_pixels()
            .filter(|(_, y, p)| rows.contains(y) && p.0 == [colour.0, colour.1, colour.2])
            .count()
    }

    /// Each panel's line is drawn in its third of the picture, the labels in ink.
    #[test]
    fn each_curve_lands_in_its_panel() {
        let rows: Vec<Row> = (1..=20)
            .map(|k| Row {
                step: 100 * k,
                loss: 1.0 / k as f64,
                lr: 2e-4 * (k as f64 / 20.0),
                grad_norm: 0.5 + 0.01 * k as f64,
            })
            .collect();
        let img = training_curves(&rows).unwrap();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let third = HEIGHT / 3;
        assert!(count(&img, SMOOTH, 0..third) > 100);
        assert_eq!(count(&img, SMOOTH, third..HEIGHT), 0);
        assert!(count(&img, LR, third..2 * third) > 100);
        assert_eq!(
            count(&img, LR, 0..third) + count(&img, LR, 2 * third..HEIGHT),
            0
        );
        assert!(count(&img, NORM, 2 * third..HEIGHT) > 100);
        // Labels: ink in the left margin of every panel.
        let ink = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x < LEFT && p.0 == INK)
            .count();
        assert!(ink > 100, "{ink}");
        // One row, zero or negative values: still a picture, on a linear scale.
        let one = [Row {
            step: 0,
            loss: 0.0,
            lr: 0.0,
            grad_norm: 0.0,
        }];
        training_curves(&one).unwrap();
        assert!(training_curves(&[]).is_err());
    }
}
