//! The live table of `watch`: one row a box, redrawn every second on a terminal, printed once as
//! lines otherwise.

use crate::command::render_table;

use super::fleet::Fleet;
use super::Shared;

/// The table of every box.
pub fn render(fleet: &Fleet) -> String {
    let rows: Vec<[String; 9]> = fleet
        .boxes
        .values()
        .map(|b| {
            let state = b.row.state.clone().unwrap_or_else(|| "?".into());
            let verified = match (b.row.last_seq, b.unsigned_events) {
                (Some(seq), _) => format!("{seq} (epoch {})", b.row.epoch),
                (None, n) if n > 0 => "unsigned".into(),
                (None, _) => "-".into(),
            };
            let head = b.announced_head.as_ref().map(|h| h.seq.to_string()).unwrap_or_else(|| "-".into());
            let gaps = match (b.gaps.len() as u64 + b.earlier_unexplained_gaps, b.unexplained_gaps()) {
                (0, _) => "0".to_string(),
                (all, 0) => format!("{all} (pruned)"),
                (all, unexplained) => format!("{all} ({unexplained} unexplained)"),
            };
            let online = b.cameras.values().filter(|s| *s == "online").count();
            let cameras = if b.cameras.is_empty() {
                "-".into()
            } else {
                let others: Vec<String> =
                    b.cameras.iter().filter(|(_, s)| *s != "online").map(|(c, s)| format!("{c} {s}")).collect();
                if others.is_empty() {
                    format!("{online}/{} online", b.cameras.len())
                } else {
                    format!("{online}/{} online; {}", b.cameras.len(), others.join(", "))
                }
            };
            [
                b.row.device.clone(),
                state,
                b.last_event.clone().unwrap_or_else(|| "-".into()),
                verified,
                head,
                gaps,
                b.rejected.to_string(),
                cameras,
                b.last_problem.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut text = render_table(
        &["box", "state", "last event", "verified up to", "head", "gaps", "kept apart", "cameras", "alarm"],
        &rows,
    );
    for device in &fleet.unknown {
        text.push_str(&format!("{device}: not in the keys file, its messages kept apart\n"));
    }
    text
}

/// Clears the terminal and draws the table with the last notes under it.
pub fn redraw(shared: &Shared, broker: &str, store: &str) {
    if let Ok(fleet) = shared.fleet.lock() {
        redraw_locked(&fleet, shared, broker, store);
    }
}

pub fn redraw_locked(fleet: &Fleet, shared: &Shared, broker: &str, store: &str) {
    let term = console::Term::stdout();
    let stored = shared.stored.load(std::sync::atomic::Ordering::Relaxed);
    let mut text = format!(
        "edge-platform watch  {broker} → {store}  {} boxes, {stored} messages stored  (Ctrl-C stops)\n\n",
        fleet.boxes.len()
    );
    text.push_str(&render(fleet));
    if let Ok(notes) = shared.notes.lock() {
        if !notes.is_empty() {
            text.push('\n');
        }
        for (time, note) in notes.iter() {
            let level = if note.alarm { "ALARM" } else { "note" };
            text.push_str(&format!("{} {} {level}: {}\n", time.get(11..19).unwrap_or(time), note.device, note.text));
        }
    }
    let _ = term.clear_screen();
    let _ = term.write_str(&text);
}
