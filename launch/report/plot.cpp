// Line charts and heatmaps (see plot.h).
#include "launch/report/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace dirmoe::plot {

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
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
    const int digits = std::clamp(static_cast<int>(std::ceil(-std::log10(step))), 1, 4);
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  }
  return buf;
}

namespace {

constexpr int kTitleScale = 2;

void draw_title(Canvas& c, int x, int y, int w, const std::string& title) {
  c.text(x + (w - Canvas::text_width(title, kTitleScale)) / 2, y + 6, title, kBlack, kTitleScale);
}

}  // namespace

void draw_line_chart(Canvas& c, int x, int y, int w, int h, const LineChart& chart) {
  draw_title(c, x, y, w, chart.title);
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  for (const auto& s : chart.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  if (!std::isfinite(xmin)) {
    xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  }
  if (chart.y_from_zero) ymin = std::min(0.0, ymin);
  if (xmax <= xmin) xmax = xmin + 1;
  if (ymax <= ymin) {
    ymax += 0.5 + std::abs(ymax) * 0.05;
    ymin -= 0.5 + std::abs(ymin) * 0.05;
  }
  const double pad = (ymax - ymin) * 0.05;
  ymax += pad;
  if (!chart.y_from_zero || ymin < 0) ymin -= pad;

  // Plot area: room for the title, tick labels, axis labels and the legend.
  const int left = x + 78, right = x + w - 16, top = y + 34, bottom = y + h - 46;
  auto px = [&](double v) { return left + (v - xmin) / (xmax - xmin) * (right - left); };
  auto py = [&](double v) { return bottom - (v - ymin) / (ymax - ymin) * (bottom - top); };
  const auto xt = nice_ticks(xmin, xmax, 8), yt = nice_ticks(ymin, ymax, 6);
  const double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;
  for (double v : yt) {
    if (v < ymin || v > ymax) continue;
    const int yy = static_cast<int>(std::lround(py(v)));
    c.line(left, yy, right, yy, {230, 230, 230});
    const std::string lab = tick_label(v, ys);
    c.text(left - 6 - Canvas::text_width(lab), yy - 3, lab, kDarkGrey);
  }
  for (double v : xt) {
    if (v < xmin || v > xmax) continue;
    const int xx = static_cast<int>(std::lround(px(v)));
    c.line(xx, top, xx, bottom, {230, 230, 230});
    const std::string lab = tick_label(v, xs);
    c.text(xx - Canvas::text_width(lab) / 2, bottom + 6, lab, kDarkGrey);
  }
  c.rect_outline(left, top, right + 1, bottom + 1, kDarkGrey);
  c.text(left + (right - left - Canvas::text_width(chart.xlabel)) / 2, bottom + 22, chart.xlabel,
         kBlack);
  c.text(x + 8, top + (bottom - top + Canvas::text_width(chart.ylabel)) / 2, chart.ylabel, kBlack,
         1,
         /*rotated=*/true);
  for (const auto& s : chart.series) {
    bool have = false;
    double lx = 0, ly = 0;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        have = false;
        continue;
      }
      const double X = px(s.x[i]), Y = py(s.y[i]);
      if (have) c.line(lx, ly, X, Y, s.color, s.thickness, s.dash);
      if (s.markers)
        c.fill_rect(static_cast<int>(X) - 3, static_cast<int>(Y) - 3, static_cast<int>(X) + 4,
                    static_cast<int>(Y) + 4, s.color);
      lx = X, ly = Y, have = true;
    }
  }
  // Legend, top right inside the plot area.
  int ly = top + 8;
  int lw = 0;
  for (const auto& s : chart.series) lw = std::max(lw, Canvas::text_width(s.name));
  if (chart.series.size() > 1 || (!chart.series.empty() && !chart.series[0].name.empty())) {
    const int lx = right - lw - 40;
    c.fill_rect(lx - 6, ly - 5, right - 4, ly + 12 * static_cast<int>(chart.series.size()) + 1,
                kWhite);
    c.rect_outline(lx - 6, ly - 5, right - 4, ly + 12 * static_cast<int>(chart.series.size()) + 1,
                   kGrey);
    for (const auto& s : chart.series) {
      c.line(lx, ly + 3, lx + 22, ly + 3, s.color, 2, s.dash);
      c.text(lx + 28, ly, s.name, kBlack);
      ly += 12;
    }
  }
}

void draw_heatmap(Canvas& c, int x, int y, int w, int h, const Heatmap& m) {
  draw_title(c, x, y, w, m.title);
  int label_w = 0;
  for (const auto& l : m.row_labels) label_w = std::max(label_w, Canvas::text_width(l));
  if (m.row_labels.empty()) label_w = Canvas::text_width(std::to_string(std::max(0, m.rows - 1)));
  const int left = x + 24 + label_w, right = x + w - 112, top = y + 34, bottom = y + h - 46;
  if (m.rows <= 0 || m.cols <= 0 || right <= left || bottom <= top) {
    c.text(x + 20, y + 50, "no data", kDarkGrey, 2);
    return;
  }
  const double span = m.vmax > m.vmin ? m.vmax - m.vmin : 1.0;
  for (int yy = top; yy < bottom; ++yy) {
    const int r = std::min(m.rows - 1, (yy - top) * m.rows / (bottom - top));
    for (int xx = left; xx < right; ++xx) {
      const int col = std::min(m.cols - 1, (xx - left) * m.cols / (right - left));
      const double v = m.values[static_cast<size_t>(r) * m.cols + col];
      c.set(xx, yy, std::isfinite(v) ? colormap((v - m.vmin) / span) : kGrey);
    }
  }
  c.rect_outline(left - 1, top - 1, right + 1, bottom + 1, kDarkGrey);
  // Row labels (at most ~ one per 10 pixels).
  const int row_step = std::max(1, 10 * m.rows / std::max(1, bottom - top));
  for (int r = 0; r < m.rows; r += row_step) {
    const std::string lab = m.row_labels.empty() ? std::to_string(r) : m.row_labels[r];
    const int yy = top + (2 * r + 1) * (bottom - top) / (2 * m.rows) - 3;
    c.text(left - 6 - Canvas::text_width(lab), yy, lab, kDarkGrey);
  }
  if (!m.col_labels.empty()) {
    int widest = 0;
    for (const auto& l : m.col_labels) widest = std::max(widest, Canvas::text_width(l));
    const int col_step = std::max(1, (widest + 8) * m.cols / std::max(1, right - left));
    for (int col = 0; col < m.cols; col += col_step) {
      const int xx = left + (2 * col + 1) * (right - left) / (2 * m.cols);
      c.text(xx - Canvas::text_width(m.col_labels[col]) / 2, bottom + 6, m.col_labels[col],
             kDarkGrey);
    }
  } else {
    const double lo = m.col_first, hi = m.col_last > lo ? m.col_last : lo + 1;
    const auto ticks = nice_ticks(lo, hi, 8);
    const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 1;
    for (double v : ticks) {
      const int xx =
          left + static_cast<int>(std::lround((v - lo) / (hi - lo) * (right - left - 1)));
      c.line(xx, bottom, xx, bottom + 3, kDarkGrey);
      const std::string lab = tick_label(v, step);
      c.text(xx - Canvas::text_width(lab) / 2, bottom + 6, lab, kDarkGrey);
    }
  }
  if (m.annotate) {
    const int cw = (right - left) / m.cols, ch = (bottom - top) / m.rows;
    for (int r = 0; r < m.rows; ++r)
      for (int col = 0; col < m.cols; ++col) {
        char buf[32];
        const double v = m.values[static_cast<size_t>(r) * m.cols + col];
        std::snprintf(buf, sizeof buf, m.annotate_format.c_str(), v);
        if (Canvas::text_width(buf) + 4 > cw || ch < 11) continue;
        const double t = (v - m.vmin) / span;
        c.text(left + col * cw + (cw - Canvas::text_width(buf)) / 2, top + r * ch + (ch - 7) / 2,
               buf, t > 0.6 ? kBlack : kWhite);
      }
  }
  c.text(left + (right - left - Canvas::text_width(m.xlabel)) / 2, bottom + 22, m.xlabel, kBlack);
  c.text(x + 6, top + (bottom - top + Canvas::text_width(m.ylabel)) / 2, m.ylabel, kBlack, 1, true);
  // Colour bar.
  const int bx = right + 18, bw = 14;
  for (int yy = top; yy < bottom; ++yy)
    c.fill_rect(bx, yy, bx + bw, yy + 1,
                colormap(1.0 - static_cast<double>(yy - top) / (bottom - top - 1)));
  c.rect_outline(bx - 1, top - 1, bx + bw + 1, bottom + 1, kDarkGrey);
  const auto ticks = nice_ticks(m.vmin, m.vmax > m.vmin ? m.vmax : m.vmin + 1, 5);
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 1;
  for (double v : ticks) {
    if (v < m.vmin || v > m.vmax) continue;
    const int yy =
        bottom - 1 - static_cast<int>(std::lround((v - m.vmin) / span * (bottom - top - 1)));
    c.line(bx + bw, yy, bx + bw + 3, yy, kDarkGrey);
    c.text(bx + bw + 6, yy - 3, tick_label(v, step), kDarkGrey);
  }
  c.text(bx + bw + 62, top + (bottom - top + Canvas::text_width(m.value_label)) / 2, m.value_label,
         kBlack, 1, true);
}

}  // namespace dirmoe::plot
