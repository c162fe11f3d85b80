//! Stop strings over streamed text: the stop sequence itself is never returned, and text that
//! could be the start of a stop sequence is held back until it is known not to be one.

#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: it may be the beginning of a stop string.
    held: String,
    stopped: bool,
}

/// What one push releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text that is safe to send to the client.
    pub text: String,
    /// A stop string was found; nothing after it will be released.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false }
    }

    /// Adds newly decoded text and returns what can be released.
    pub fn push(&mut self, delta: &str) -> Released {
        if self.stopped {
            return Released { text: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return Released { text: delta.to_string(), stopped: false };
        }
        self.held.push_str(delta);
        // The earliest stop occurrence wins; text before it is released, the rest dropped.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            self.stopped = true;
            return Released { text, stopped: true };
        }
        let keep = self.longest_suffix_that_starts_a_stop();
        let release_to = self.held.len() - keep;
        let text = self.held[..release_to].to_string();
        self.held.drain(..release_to);
        Released { text, stopped: false }
    }

    /// Releases whatever is held: the sequence ended without completing a stop string.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    fn longest_suffix_that_starts_a_stop(&self) -> usize {
        let held = self.held.as_str();
        let mut longest = 0;
        for stop in &self.stops {
            // A suffix of `held` that is a proper prefix of `stop` (a full match was handled).
            let max = stop.len().saturating_sub(1).min(held.len());
            for len in (longest + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.as_bytes().starts_with(&held.as_bytes()[start..]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut released = Vec::new();
        let mut stopped = false;
        for d in deltas {
            let r = m.push(d);
            released.push(r.text);
            stopped |= r.stopped;
        }
        let tail = m.finish();
        (released, stopped, tail)
    }

    #[test]
    fn stop_string_is_cut_even_across_deltas() {
        let (released, stopped, tail) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er: more"]);
        assert_eq!(released, vec!["Hello", " there", "", ""]);
        assert!(stopped);
        assert_eq!(tail, "");
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_be_a_stop() {
        let (released, stopped, tail) = run(&["END"], &["the E", "N", "D", "X"]);
        assert_eq!(released, vec!["the ", "", "", ""], "ENDX contains END");
        assert!(stopped);
        let (released, stopped, tail2) = run(&["END"], &["the E", "NX", "EN"]);
        assert_eq!(released, vec!["the ", "ENX", ""]);
        assert!(!stopped);
        assert_eq!(tail2, "EN", "a partial stop at the very end is ordinary text");
        assert_eq!(tail, "");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_kept_whole() {
        let (released, stopped, _) = run(&["bb", "a"], &["xxbba"]);
        assert_eq!(released, vec!["xx"]);
        assert!(stopped);
        let (released, _, tail) = run(&["é!"], &["caf", "é", "?"]);
        assert_eq!(released, vec!["caf", "", "é?"]);
        assert_eq!(tail, "");
        let (released, _, _) = run(&[], &["anything"]);
        assert_eq!(released, vec!["anything"]);
    }
}
