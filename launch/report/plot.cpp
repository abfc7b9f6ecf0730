// Line charts and heat maps over cairo (see plot.h). Layout is in pixels: margins are measured
// from the text they hold, 1-pixel rules sit on pixel centres so they stay sharp.
#include "launch/report/plot.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>

#include "runtime/core/error.h"

namespace dirmoe::plot {

Rgb series_color(int i) {
  static const Rgb k[10] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                            {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                            {188, 189, 34},  {23, 190, 207}};
  return k[((i % 10) + 10) % 10];
}

Rgb colormap(double t) {
  // Viridis sampled at 9 points, linearly interpolated.
  static const double k[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                 {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                 {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * 8;
  const int i = std::min(7, static_cast<int>(t));
  const double f = t - i;
  auto mix = [&](int c) {
    return static_cast<uint8_t>(std::lround(k[i][c] * (1 - f) + k[i + 1][c] * f));
  };
  return {mix(0), mix(1), mix(2)};
}

Figure::Figure(int width, int height)
    : w_(width), h_(height), surface_(nullptr, cairo_surface_destroy), cr_(nullptr, cairo_destroy) {
  DIRMOE_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, "plot: figure size ",
               width, "x", height, " out of range");
  surface_.reset(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height));
  const cairo_status_t st = cairo_surface_status(surface_.get());
  DIRMOE_CHECK(st == CAIRO_STATUS_SUCCESS, "plot: cannot create a ", width, "x", height,
               " image: ", cairo_status_to_string(st));
  cr_.reset(cairo_create(surface_.get()));
  cairo_set_source_rgb(cr_.get(), 1, 1, 1);
  cairo_paint(cr_.get());
}

void Figure::write_png(const std::string& path) const {
  cairo_surface_flush(surface_.get());
  const cairo_status_t st = cairo_surface_write_to_png(surface_.get(), path.c_str());
  if (st != CAIRO_STATUS_SUCCESS)
    DIRMOE_FAIL("plot: cannot write '", path, "': ", cairo_status_to_string(st));
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw * 0.85) {  // up to 15% finer: a few more ticks, never half as many
      step = m * mag;
      break;
    }
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return out;
}

std::string tick_label(double v, double step) {
  char buf[32];
  const double a = std::abs(v);
  if (a >= 1e6 || (a > 0 && a < 1e-3))
    std::snprintf(buf, sizeof buf, "%.2g", v);
  else if (step >= 1 || v == std::round(v))
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else {
    const int digits = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 1, 4);
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  }
  return buf;
}

namespace {

constexpr double kPi = std::numbers::pi;
constexpr double kTitleSize = 16, kLabelSize = 13, kTickSize = 12, kLegendSize = 12;
constexpr Rgb kText{30, 30, 30}, kTickText{70, 70, 70}, kGrid{226, 226, 226}, kFrame{90, 90, 90},
    kLegendEdge{200, 200, 200}, kMissing{215, 215, 215};

void set_color(cairo_t* cr, Rgb c, double alpha = 1) {
  cairo_set_source_rgba(cr, c.r / 255.0, c.g / 255.0, c.b / 255.0, alpha);
}

void set_font(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double text_width(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

double cap_height(cairo_t* cr) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, "0", &e);
  return e.height;
}

// Text anchored at (x, y): ha 0/0.5/1 puts x at its left/centre/right, va 0/0.5/1 puts y at the top
// of its capitals, their middle, the baseline. angle -pi/2 reads bottom to top.
void text(cairo_t* cr, double x, double y, const std::string& s, double ha, double va,
          double angle = 0) {
  if (s.empty()) return;
  const double w = text_width(cr, s), cap = cap_height(cr);
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, angle);
  cairo_move_to(cr, -ha * w, cap * (1 - va));
  cairo_show_text(cr, s.c_str());
  cairo_restore(cr);
}

double crisp(double v) { return std::floor(v) + 0.5; }

void hline(cairo_t* cr, double x0, double x1, double y) {
  cairo_move_to(cr, x0, crisp(y));
  cairo_line_to(cr, x1, crisp(y));
}

void vline(cairo_t* cr, double x, double y0, double y1) {
  cairo_move_to(cr, crisp(x), y0);
  cairo_line_to(cr, crisp(x), y1);
}

void frame(cairo_t* cr, double l, double t, double r, double b) {
  set_color(cr, kFrame);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, crisp(l), crisp(t), std::floor(r) - std::floor(l),
                  std::floor(b) - std::floor(t));
  cairo_stroke(cr);
}

void title_and_labels(cairo_t* cr, double y, double left, double right, double top, double bottom,
                      double ylabel_x, const std::string& title, const std::string& xlabel,
                      const std::string& ylabel) {
  set_color(cr, kText);
  set_font(cr, kTitleSize, true);
  text(cr, (left + right) / 2, y + 14, title, 0.5, 0);
  set_font(cr, kLabelSize);
  text(cr, (left + right) / 2, bottom + 36, xlabel, 0.5, 0);
  text(cr, ylabel_x, (top + bottom) / 2, ylabel, 0.5, 1, -kPi / 2);
}

}  // namespace

void draw_line_chart(Figure& f, double x, double y, double w, double h, const LineChart& chart) {
  cairo_t* cr = f.context();
  cairo_save(cr);
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  for (const auto& s : chart.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  if (!std::isfinite(xmin)) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (chart.y_from_zero) ymin = std::min(0.0, ymin);
  if (xmax <= xmin) xmax = xmin + 1;
  if (ymax <= ymin) {
    ymax += 0.5 + std::abs(ymax) * 0.05;
    ymin -= 0.5 + std::abs(ymin) * 0.05;
  }
  const double pad = (ymax - ymin) * 0.05, xpad = (xmax - xmin) * 0.015;
  ymax += pad;
  if (!chart.y_from_zero || ymin < 0) ymin -= pad;
  xmin -= xpad, xmax += xpad;  // markers at the ends stay clear of the frame
  const auto xt = nice_ticks(xmin, xmax, 8), yt = nice_ticks(ymin, ymax, 6);
  const double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;

  // Margins: the y tick labels and the rotated y label on the left, x ticks and label below.
  set_font(cr, kTickSize);
  double ytw = 0;
  for (double v : yt) ytw = std::max(ytw, text_width(cr, tick_label(v, ys)));
  const double ylabel_x = x + 14 + kLabelSize;
  const double left = ylabel_x + 10 + ytw + 8, right = x + w - 24, top = y + 44,
               bottom = y + h - 54;
  auto px = [&](double v) { return left + (v - xmin) / (xmax - xmin) * (right - left); };
  auto py = [&](double v) { return bottom - (v - ymin) / (ymax - ymin) * (bottom - top); };

  set_color(cr, kGrid);
  cairo_set_line_width(cr, 1);
  for (double v : yt)
    if (v >= ymin && v <= ymax) hline(cr, left, right, py(v));
  for (double v : xt)
    if (v >= xmin && v <= xmax) vline(cr, px(v), top, bottom);
  cairo_stroke(cr);

  // Series, clipped to the plot area.
  cairo_save(cr);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
  for (const auto& s : chart.series) {
    set_color(cr, s.color);
    cairo_set_line_width(cr, s.width);
    const double dash[2] = {s.dash, s.dash * 0.7};
    cairo_set_dash(cr, dash, s.dash > 0 ? 2 : 0, 0);
    bool have = false;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        have = false;
        continue;
      }
      if (have)
        cairo_line_to(cr, px(s.x[i]), py(s.y[i]));
      else
        cairo_move_to(cr, px(s.x[i]), py(s.y[i]));
      have = true;
    }
    cairo_stroke(cr);
    cairo_set_dash(cr, nullptr, 0, 0);
    if (s.markers)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        cairo_new_sub_path(cr);
        cairo_arc(cr, px(s.x[i]), py(s.y[i]), 4, 0, 2 * kPi);
        set_color(cr, s.color);
        cairo_fill_preserve(cr);
        set_color(cr, kWhite);
        cairo_set_line_width(cr, 1);
        cairo_stroke(cr);
      }
  }
  cairo_restore(cr);

  // Frame, outward ticks and their labels.
  frame(cr, left, top, right, bottom);
  for (double v : yt)
    if (v >= ymin && v <= ymax) hline(cr, left - 5, left, py(v));
  for (double v : xt)
    if (v >= xmin && v <= xmax) vline(cr, px(v), bottom, bottom + 5);
  cairo_stroke(cr);
  set_color(cr, kTickText);
  set_font(cr, kTickSize);
  for (double v : yt)
    if (v >= ymin && v <= ymax) text(cr, left - 8, py(v), tick_label(v, ys), 1, 0.5);
  for (double v : xt)
    if (v >= xmin && v <= xmax) text(cr, px(v), bottom + 9, tick_label(v, xs), 0.5, 0);
  title_and_labels(cr, y, left, right, top, bottom, ylabel_x, chart.title, chart.xlabel,
                   chart.ylabel);

  // Legend in the corner of the plot area that hides the fewest points of the lines.
  std::vector<const Series*> named;
  for (const auto& s : chart.series)
    if (!s.name.empty()) named.push_back(&s);
  if (named.empty()) {
    cairo_restore(cr);
    return;
  }
  set_font(cr, kLegendSize);
  double lw = 0;
  for (const auto* s : named) lw = std::max(lw, text_width(cr, s->name));
  // As many rows as fit in 40% of the plot height, then more columns.
  const double row = 20, swatch = 28, col_w = 10 + swatch + 8 + lw + 4, inset = 10;
  const int max_rows = std::max(1, static_cast<int>(((bottom - top) * 0.4 - 12) / row));
  const int num_cols = (static_cast<int>(named.size()) + max_rows - 1) / max_rows;
  const int num_rows = (static_cast<int>(named.size()) + num_cols - 1) / num_cols;
  const double box_w = col_w * num_cols + 6, box_h = 8 + row * num_rows + 4;
  const double corners[4][2] = {{right - inset - box_w, top + inset},
                                {left + inset, top + inset},
                                {left + inset, bottom - inset - box_h},
                                {right - inset - box_w, bottom - inset - box_h}};
  int best = 0;
  int64_t best_hits = std::numeric_limits<int64_t>::max();
  for (int c = 0; c < 4; ++c) {
    const double bx = corners[c][0], by = corners[c][1];
    auto inside = [&](double X, double Y) {
      return X >= bx - 4 && X <= bx + box_w + 4 && Y >= by - 4 && Y <= by + box_h + 4;
    };
    int64_t hits = 0;
    for (const auto& s : chart.series)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        const double X1 = px(s.x[i]), Y1 = py(s.y[i]);
        const bool seg = i > 0 && std::isfinite(s.x[i - 1]) && std::isfinite(s.y[i - 1]);
        const double X0 = seg ? px(s.x[i - 1]) : X1, Y0 = seg ? py(s.y[i - 1]) : Y1;
        const int n = std::max(1, static_cast<int>(std::hypot(X1 - X0, Y1 - Y0) / 3));
        for (int k = 1; k <= n; ++k) hits += inside(X0 + (X1 - X0) * k / n, Y0 + (Y1 - Y0) * k / n);
      }
    if (hits < best_hits) best_hits = hits, best = c;
  }
  const double bx = corners[best][0], by = corners[best][1], r = 4;
  cairo_new_sub_path(cr);
  cairo_arc(cr, bx + box_w - r, by + r, r, -kPi / 2, 0);
  cairo_arc(cr, bx + box_w - r, by + box_h - r, r, 0, kPi / 2);
  cairo_arc(cr, bx + r, by + box_h - r, r, kPi / 2, kPi);
  cairo_arc(cr, bx + r, by + r, r, kPi, 3 * kPi / 2);
  cairo_close_path(cr);
  set_color(cr, kWhite, 0.9);
  cairo_fill_preserve(cr);
  set_color(cr, kLegendEdge);
  cairo_set_line_width(cr, 1);
  cairo_stroke(cr);
  for (size_t i = 0; i < named.size(); ++i) {
    const Series& s = *named[i];
    const double cy = by + 8 + row * (i % num_rows + 0.5), sx = bx + 10 + col_w * (i / num_rows);
    set_color(cr, s.color);
    cairo_set_line_width(cr, std::max(2.0, s.width));
    const double dash[2] = {s.dash * 0.6, s.dash * 0.4};
    cairo_set_dash(cr, dash, s.dash > 0 ? 2 : 0, 0);
    cairo_move_to(cr, sx, cy);
    cairo_line_to(cr, sx + swatch, cy);
    cairo_stroke(cr);
    cairo_set_dash(cr, nullptr, 0, 0);
    if (s.markers) {
      cairo_arc(cr, sx + swatch / 2, cy, 4, 0, 2 * kPi);
      cairo_fill(cr);
    }
    set_color(cr, kText);
    text(cr, sx + swatch + 8, cy, s.name, 0, 0.5);
  }
  cairo_restore(cr);
}

void draw_heatmap(Figure& f, double x, double y, double w, double h, const Heatmap& m) {
  cairo_t* cr = f.context();
  cairo_save(cr);
  const double span = m.vmax > m.vmin ? m.vmax - m.vmin : 1.0;
  const auto cticks = nice_ticks(m.vmin, m.vmin + span, 5);
  const double cstep = cticks.size() > 1 ? cticks[1] - cticks[0] : 1;
  auto row_label = [&](int r) {
    return r < static_cast<int>(m.row_labels.size()) ? m.row_labels[r] : std::to_string(r);
  };
  set_font(cr, kTickSize);
  double label_w = 0, cbar_w = 0;
  for (int r = 0; r < m.rows; ++r) label_w = std::max(label_w, text_width(cr, row_label(r)));
  for (double v : cticks) cbar_w = std::max(cbar_w, text_width(cr, tick_label(v, cstep)));
  const double ylabel_x = x + 14 + (m.ylabel.empty() ? 0 : kLabelSize);
  const double left = ylabel_x + (m.ylabel.empty() ? 0 : 10) + label_w + 8;
  const double bar_w = 16, value_w = m.value_label.empty() ? 0 : kLabelSize + 12;
  const double right = x + w - (18 + bar_w + 8 + cbar_w + value_w + 12);
  const double top = y + 44, bottom = y + h - 54;
  if (m.rows <= 0 || m.cols <= 0 || right <= left || bottom <= top) {
    set_color(cr, kTickText);
    set_font(cr, kTitleSize);
    text(cr, x + 20, y + 50, m.title + ": no data", 0, 0);
    cairo_restore(cr);
    return;
  }
  const double cw = (right - left) / m.cols, rh = (bottom - top) / m.rows;

  // Cells: one pixel per cell in an image, scaled up without smoothing.
  std::unique_ptr<cairo_surface_t, void (*)(cairo_surface_t*)> cells(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, m.cols, m.rows), cairo_surface_destroy);
  cairo_surface_t* img = cells.get();
  DIRMOE_CHECK(cairo_surface_status(img) == CAIRO_STATUS_SUCCESS, "plot: cannot create a ", m.cols,
               "x", m.rows, " heat map");
  unsigned char* data = cairo_image_surface_get_data(img);
  const int stride = cairo_image_surface_get_stride(img);
  for (int r = 0; r < m.rows; ++r)
    for (int c = 0; c < m.cols; ++c) {
      const double v = m.values[static_cast<size_t>(r) * m.cols + c];
      const Rgb p = std::isfinite(v) ? colormap((v - m.vmin) / span) : kMissing;
      reinterpret_cast<uint32_t*>(data + static_cast<size_t>(r) * stride)[c] =
          (uint32_t{p.r} << 16) | (uint32_t{p.g} << 8) | p.b;
    }
  cairo_surface_mark_dirty(img);
  cairo_save(cr);
  cairo_translate(cr, left, top);
  cairo_scale(cr, cw, rh);
  cairo_set_source_surface(cr, img, 0, 0);
  cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
  cairo_rectangle(cr, 0, 0, m.cols, m.rows);
  cairo_fill(cr);
  cairo_restore(cr);
  frame(cr, left, top, right, bottom);

  if (m.annotate && rh >= 16) {
    set_font(cr, std::clamp(std::min(rh * 0.4, cw / 3.5), 10.0, 16.0));
    for (int r = 0; r < m.rows; ++r)
      for (int c = 0; c < m.cols; ++c) {
        const double v = m.values[static_cast<size_t>(r) * m.cols + c];
        if (!std::isfinite(v)) continue;
        char buf[32];
        std::snprintf(buf, sizeof buf, m.annotate_format.c_str(), v);
        if (text_width(cr, buf) + 6 > cw) continue;
        const Rgb p = colormap((v - m.vmin) / span);
        set_color(cr, 0.299 * p.r + 0.587 * p.g + 0.114 * p.b > 140 ? kText : kWhite);
        text(cr, left + (c + 0.5) * cw, top + (r + 0.5) * rh, buf, 0.5, 0.5);
      }
  }

  // Row ticks (as many as fit), then column ticks: categorical labels or a numeric axis.
  set_font(cr, kTickSize);
  const int row_step = std::max(1, static_cast<int>(std::ceil(16 / rh)));
  std::vector<std::pair<double, std::string>> xt;
  if (!m.col_labels.empty()) {
    double widest = 0;
    for (const auto& l : m.col_labels) widest = std::max(widest, text_width(cr, l));
    const int col_step = std::max(1, static_cast<int>(std::ceil((widest + 10) / cw)));
    for (int c = 0; c < m.cols && c < static_cast<int>(m.col_labels.size()); c += col_step)
      xt.emplace_back(left + (c + 0.5) * cw, m.col_labels[c]);
  } else {
    const double lo = m.col_first, hi = m.col_last > lo ? m.col_last : lo + 1;
    const auto ticks = nice_ticks(lo, hi, 8);
    const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 1;
    for (double v : ticks) {
      if (v < lo || v > hi) continue;
      const double pos = m.cols > 1 ? (v - lo) / (hi - lo) * (m.cols - 1) + 0.5 : 0.5;
      xt.emplace_back(left + pos * cw, tick_label(v, step));
    }
  }
  set_color(cr, kFrame);
  for (int r = 0; r < m.rows; r += row_step) hline(cr, left - 4, left, top + (r + 0.5) * rh);
  for (const auto& [X, lab] : xt) vline(cr, X, bottom, bottom + 4);
  cairo_stroke(cr);
  set_color(cr, kTickText);
  for (int r = 0; r < m.rows; r += row_step)
    text(cr, left - 7, top + (r + 0.5) * rh, row_label(r), 1, 0.5);
  for (const auto& [X, lab] : xt) text(cr, X, bottom + 9, lab, 0.5, 0);
  title_and_labels(cr, y, left, right, top, bottom, ylabel_x, m.title, m.xlabel, m.ylabel);

  // Colour bar.
  const double bx = right + 18;
  cairo_pattern_t* grad = cairo_pattern_create_linear(0, bottom, 0, top);
  for (int i = 0; i <= 8; ++i) {
    const Rgb p = colormap(i / 8.0);
    cairo_pattern_add_color_stop_rgb(grad, i / 8.0, p.r / 255.0, p.g / 255.0, p.b / 255.0);
  }
  cairo_rectangle(cr, bx, top, bar_w, bottom - top);
  cairo_set_source(cr, grad);
  cairo_fill(cr);
  cairo_pattern_destroy(grad);
  frame(cr, bx, top, bx + bar_w, bottom);
  auto cy = [&](double v) { return bottom - (v - m.vmin) / span * (bottom - top); };
  for (double v : cticks)
    if (v >= m.vmin && v <= m.vmin + span) hline(cr, bx + bar_w, bx + bar_w + 4, cy(v));
  cairo_stroke(cr);
  set_color(cr, kTickText);
  for (double v : cticks)
    if (v >= m.vmin && v <= m.vmin + span)
      text(cr, bx + bar_w + 7, cy(v), tick_label(v, cstep), 0, 0.5);
  set_color(cr, kText);
  set_font(cr, kLabelSize);
  text(cr, bx + bar_w + 8 + cbar_w + 10, (top + bottom) / 2, m.value_label, 0.5, 0, -kPi / 2);
  cairo_restore(cr);
}

}  // namespace dirmoe::plot
