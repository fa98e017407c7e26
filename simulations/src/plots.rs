//! The run's plots, drawn with plotters as SVG: send-to-device latency CDFs (log time axis, one
//! curve per sample: the model's, and with `--real` the real stack's beside it), envelopes
//! and bytes held over time, and linkability against the cost of each privacy knob. Text comes from the run (a scenario's name); plotters escapes it.

use crate::sim::Sample;
use plotters::coord::CoordTranslate;
use plotters::prelude::*;
use std::io;

/// Colours of a plot's curves, in order (colour-blind-safe enough: blue, red, green, purple).
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const SIZE: (u32, u32) = (720, 440);
/// Points drawn per curve at most: a million-message CDF is drawn from evenly spaced ranks.
const MAX_POINTS: usize = 500;

fn plot_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("drawing a plot: {e}"))
}

/// The legend of every plot here: curve names in a framed white box at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> io::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

/// `1 ms`, `250 ms`, `2 s`, `1.5 min`: a latency axis label.
fn label_ms(v: f64) -> String {
    if v >= 60_000.0 {
        format!("{} min", v / 60_000.0)
    } else if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else {
        format!("{v} ms")
    }
}

/// Cumulative distributions of latencies (each sample sorted ascending, in ms) on one
/// log-scaled time axis, with a legend naming each curve and its sample size.
pub fn latency_cdf(title: &str, curves: &[(&str, &[f64])]) -> io::Result<String> {
    let ends = || {
        curves
            .iter()
            .flat_map(|(_, c)| c.first().into_iter().chain(c.last()))
    };
    let smallest = ends().copied().fold(f64::INFINITY, f64::min);
    let largest = ends().copied().fold(0.0, f64::max);
    // Whole decades, from at least 1 ms, at least one decade wide.
    let lo = 10f64.powf(
        if smallest.is_finite() { smallest } else { 1.0 }
            .max(1.0)
            .log10()
            .floor(),
    );
    let hi = 10f64.powf(largest.max(10.0).log10().ceil()).max(lo * 10.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("send to device latency (log scale)")
            .y_desc("fraction delivered within")
            .x_label_formatter(&|v| label_ms(*v))
            .draw()
            .map_err(plot_error)?;
        for (k, (name, sorted)) in curves.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let n = sorted.len();
            let step = (n / MAX_POINTS).max(1);
            let ranks = (0..n).step_by(step).chain((n > 0).then(|| n - 1));
            let points = ranks.map(|i| (sorted[i].max(lo), (i + 1) as f64 / n as f64));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{name} ({n} messages)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Envelopes held over simulated time: in outboxes (waiting for other nodes), in mailboxes
/// (waiting for devices), and on the fullest node.
pub fn held_over_time(title: &str, series: &[Sample]) -> io::Result<String> {
    over_time(
        title,
        "envelopes held",
        series,
        &[
            ("in outboxes (waiting for other nodes)", |s| {
                s.outbox_envelopes as f64
            }),
            ("in mailboxes (waiting for devices)", |s| {
                s.mailbox_envelopes as f64
            }),
            ("on the fullest node", |s| s.max_node_envelopes as f64),
        ],
    )
}

/// Bytes held over simulated time, in MiB: envelope bodies in mailboxes and sealed file chunks
/// across all nodes, and both together on the fullest node.
pub fn storage_over_time(title: &str, series: &[Sample]) -> io::Result<String> {
    const MIB: f64 = (1u64 << 20) as f64;
    over_time(
        title,
        "MiB held",
        series,
        &[
            ("mail (envelope bodies)", |s| s.mailbox_bytes as f64 / MIB),
            ("files (sealed chunks)", |s| s.file_bytes as f64 / MIB),
            ("mail and files on the fullest node", |s| {
                s.max_node_bytes as f64 / MIB
            }),
        ],
    )
}

/// Lines of the time series against simulated time.
fn over_time(
    title: &str,
    y_desc: &str,
    series: &[Sample],
    lines: &[Series<Sample>],
) -> io::Result<String> {
    let t_max = series.last().map(|s| s.t_s).unwrap_or(0.0).max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| lines.iter().map(move |(_, v)| v(s)))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("simulated time (s)")
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        for (k, (name, value)) in lines.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points = series.iter().map(|s| (s.t_s, value(s)));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// (knob, bytes relative, one operator, two colluding).
type KnobPoint = (String, f64, f64, f64);
/// A curve's name and what it draws of each point.
type Series<T> = (&'static str, fn(&T) -> f64);

/// What each privacy knob buys against what it costs: one point per run at (all bytes relative
/// to the baseline, log scale; linkability), for one operator and for two colluding, labelled
/// with the knob. `points`: (knob, bytes relative, one operator, two colluding).
pub fn linkability_against_cost(title: &str, points: &[KnobPoint]) -> io::Result<String> {
    let hi = points
        .iter()
        .map(|p| p.1)
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let x_range = (0.5f64..10f64.powf(hi) * 1.5).log_scale();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(x_range, 0f64..1.05f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("bytes moved, relative to the scenario as given (log scale)")
            .y_desc("conversations linkable")
            .x_label_formatter(&|v| format!("{v}×"))
            .draw()
            .map_err(plot_error)?;
        let who: [Series<KnobPoint>; 2] = [
            ("one operator", |p| p.2),
            ("two colluding operators", |p| p.3),
        ];
        for (k, (name, value)) in who.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.1, value(p)), 4 + k as i32, colour.filled())),
                )
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
        }
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Text::new(p.0.clone(), (p.1, p.2), ("sans-serif", 11).into_font())),
            )
            .map_err(plot_error)?;
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
