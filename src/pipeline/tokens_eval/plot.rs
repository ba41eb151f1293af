//! The Pareto PNG of `tokens eval`: accuracy and mean cosine against the
//! mean kept fraction, one line per series.

use std::path::Path;

use plotters::prelude::*;

use super::{EvalPoint, TokensEvalReport};
use crate::io::AtomicFile;
use crate::pipeline::plot::{plot_err, png_bytes, register};
use crate::{Error, Result};

const PANEL_W: u32 = 760;
const PANEL_H: u32 = 600;
const COLORS: [RGBColor; 14] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(120, 60, 180),
    RGBColor(0, 110, 90),
    RGBColor(200, 160, 0),
];

/// Two panels: accuracy and mean cosine against the mean kept fraction, one line per series.
pub(super) fn write_png(report: &TokensEvalReport, path: &Path) -> Result<()> {
    register();
    let width = 2 * PANEL_W;
    let mut buf = vec![0u8; (width * PANEL_H * 3) as usize];
    let mut series: Vec<&str> = Vec::new();
    for p in &report.points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, PANEL_H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let title = format!(
            "dprune tokens eval: toy ViT (MNIST), {} images, {} patch tokens; unpruned accuracy {:.3}",
            report.n_images, report.n_patches, report.unpruned_accuracy
        );
        let root = root.titled(&title, ("sans-serif", 22)).map_err(plot_err)?;
        let areas = root.split_evenly((1, 2));
        for (panel, area) in areas.iter().enumerate() {
            let value = |p: &EvalPoint| if panel == 0 { p.accuracy } else { p.cosine_mean };
            let lo = report.points.iter().map(value).fold(1.0f64, f64::min);
            let lo = if panel == 0 {
                lo.min(report.unpruned_accuracy)
            } else {
                lo
            };
            let y0 = (lo - 0.05 * (1.0 - lo).max(0.02)).max(0.0);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if panel == 0 {
                        "top-1 accuracy vs kept fraction"
                    } else {
                        "cosine of pooled to unpruned vs kept fraction"
                    },
                    ("sans-serif", 18),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..1.05f64, y0..1.005f64)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("mean kept fraction of patch tokens")
                .y_desc(if panel == 0 { "accuracy" } else { "mean cosine" })
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(plot_err)?;
            if panel == 0 {
                let u = report.unpruned_accuracy;
                chart
                    .draw_series(LineSeries::new([(0.0, u), (1.05, u)], BLACK.mix(0.4).stroke_width(1)))
                    .map_err(plot_err)?;
            }
            for (si, name) in series.iter().enumerate() {
                let color = COLORS[si % COLORS.len()];
                let mut pts: Vec<(f64, f64)> = report
                    .points
                    .iter()
                    .filter(|p| p.series == *name)
                    .map(|p| (p.mean_kept_fraction, value(p)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let adaptive = name.contains('@');
                let style = color.stroke_width(if adaptive { 3 } else { 2 });
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(plot_err)?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(3)));
                if adaptive {
                    chart
                        .draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 6, color.filled())))
                        .map_err(plot_err)?;
                } else {
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                        .map_err(plot_err)?;
                }
            }
            if panel == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(plot_err)?;
            }
        }
        root.present().map_err(plot_err)?;
    }
    let img = png_bytes(&buf, width, PANEL_H)?;
    let atomic = AtomicFile::new(path)?;
    std::fs::write(atomic.tmp_path(), img).map_err(|e| Error::io("writing", path, e))?;
    atomic.commit()
}
