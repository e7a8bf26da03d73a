//! SVG pictures written as text, for the page's charts and the tools' report files: one writer that
//! escapes every attribute value and text with the page's own escape (maud's).

use std::fmt::{Display, Write as _};

use maud::Escaper;

/// Colours of a chart's series, in order.
pub const PALETTE: [&str; 8] = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#64748b"];

/// An attribute's name and value; the value is escaped when written.
pub type Attr<'a> = (&'a str, &'a dyn Display);

/// A picture being written, element by element.
pub struct Svg {
    out: String,
    /// A file of its own is XML (`<line/>`); inside a page, elements are closed as HTML writes them.
    file: bool,
}

impl Svg {
    /// A picture file of its own, on white, named by `title`.
    pub fn file(width: f64, height: f64, font_size: u32, title: &str) -> Self {
        let mut svg = Self { out: String::new(), file: true };
        svg.start(
            "svg",
            &[
                ("xmlns", &"http://www.w3.org/2000/svg"),
                ("width", &width),
                ("height", &height),
                ("viewBox", &format_args!("0 0 {width} {height}")),
                ("font-family", &"sans-serif"),
                ("font-size", &font_size),
            ],
        );
        svg.out.push_str(">\n");
        svg.text("title", &[], &title).newline();
        svg.shape("rect", &[("width", &width), ("height", &height), ("fill", &"white")]).newline();
        svg
    }

    /// A chart inside a page, scaled to its width; `label` is its accessible name.
    pub fn in_page(width: f64, height: f64, label: &str) -> Self {
        let mut svg = Self { out: String::new(), file: false };
        svg.start(
            "svg",
            &[
                ("viewBox", &format_args!("0 0 {width} {height}")),
                ("role", &"img"),
                ("aria-label", &label),
                ("preserveAspectRatio", &"xMidYMid meet"),
            ],
        );
        svg.out.push('>');
        svg
    }

    /// An element without content (a line, a rectangle).
    pub fn shape(&mut self, name: &str, attrs: &[Attr]) -> &mut Self {
        self.start(name, attrs);
        if self.file {
            self.out.push_str("/>");
        } else {
            let _ = write!(self.out, "></{name}>");
        }
        self
    }

    /// An element holding text.
    pub fn text(&mut self, name: &str, attrs: &[Attr], text: &dyn Display) -> &mut Self {
        self.start(name, attrs);
        self.out.push('>');
        self.escaped(text);
        let _ = write!(self.out, "</{name}>");
        self
    }

    /// A shape with a tooltip (its `title`).
    pub fn titled(&mut self, name: &str, attrs: &[Attr], tooltip: &dyn Display) -> &mut Self {
        self.start(name, attrs);
        self.out.push_str("><title>");
        self.escaped(tooltip);
        let _ = write!(self.out, "</title></{name}>");
        self
    }

    /// A line break between elements, so a file reads line by line.
    pub fn newline(&mut self) -> &mut Self {
        self.out.push('\n');
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push_str(if self.file { "</svg>\n" } else { "</svg>" });
        self.out
    }

    fn start(&mut self, name: &str, attrs: &[Attr]) {
        let _ = write!(self.out, "<{name}");
        for (attr, value) in attrs {
            let _ = write!(self.out, " {attr}=\"");
            self.escaped(*value);
            self.out.push('"');
        }
    }

    fn escaped(&mut self, value: &dyn Display) {
        let _ = write!(Escaper::new(&mut self.out), "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_xml_on_white_and_escapes_what_it_is_given() {
        let mut svg = Svg::file(100.0, 50.5, 11, "a <b> & \"c\"");
        svg.shape("line", &[("x1", &0.5), ("stroke", &"black")]).newline();
        svg.titled("rect", &[("fill", &"#fff")], &"x<y");
        let text = svg.finish();
        assert!(text.starts_with(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"100\" height=\"50.5\" viewBox=\"0 0 100 50.5\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<title>a &lt;b&gt; &amp; &quot;c&quot;</title>\n\
             <rect width=\"100\" height=\"50.5\" fill=\"white\"/>\n"
        ));
        assert!(text.ends_with(
            "<line x1=\"0.5\" stroke=\"black\"/>\n<rect fill=\"#fff\"><title>x&lt;y</title></rect></svg>\n"
        ));
    }

    #[test]
    fn in_a_page_elements_are_closed_as_html_writes_them() {
        let mut svg = Svg::in_page(480.0, 220.0, "Events & more");
        svg.shape("line", &[("x1", &40.0)]).text("text", &[("x", &"1")], &3);
        assert_eq!(
            svg.finish(),
            "<svg viewBox=\"0 0 480 220\" role=\"img\" aria-label=\"Events &amp; more\" \
             preserveAspectRatio=\"xMidYMid meet\"><line x1=\"40\"></line><text x=\"1\">3</text></svg>"
        );
    }
}
