//! `order:` — Salt's explicit run order: numbered states first (lowest
//! first), then the others in declaration order, then `order: last`;
//! `first` is 0 and a negative number counts from the end (-1 just
//! before `last`, as Salt computes it). Requisites
//! still win: the agent runs a state after its requisites whatever its
//! order.

use std::cmp::Ordering;

/// Where a state's `order:` puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// A number (`first` is 0).
    Number(i64),
    /// No `order:`: declaration order, after the numbered ones.
    #[default]
    Unset,
    /// `last`, or a negative number (-1 is the very last).
    FromEnd(i64),
}

/// Reads `order:`'s value; `Err` is what was written.
pub fn parse(value: &serde_json::Value) -> Result<Order, String> {
    match value {
        serde_json::Value::String(s) if s == "first" => Ok(Order::Number(0)),
        serde_json::Value::String(s) if s == "last" => Ok(Order::FromEnd(0)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(n) if n < 0 => Ok(Order::FromEnd(n)),
            Some(n) => Ok(Order::Number(n)),
            None => Err(n.to_string()),
        },
        other => Err(other.to_string()),
    }
}

/// Compares two orders; equal ones keep declaration order (the caller
/// sorts stably).
pub fn compare(a: Order, b: Order) -> Ordering {
    fn rank(order: Order) -> (u8, i64) {
        match order {
            Order::Number(n) => (0, n),
            Order::Unset => (1, 0),
            // Salt: a negative n is `cap + 1000000 + n`, `last` is
            // `cap + 1000000`: -2, then -1, then `last`.
            Order::FromEnd(n) => (2, n),
        }
    }
    rank(a).cmp(&rank(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_as_salt_runs() {
        let mut states = [
            ("a", Order::Unset),
            ("last", Order::FromEnd(0)),
            ("ten", Order::Number(10)),
            ("minus-one", Order::FromEnd(-1)),
            ("b", Order::Unset),
            ("first", Order::Number(0)),
            ("minus-two", Order::FromEnd(-2)),
        ];
        states.sort_by(|x, y| compare(x.1, y.1));
        let names: Vec<&str> = states.iter().map(|s| s.0).collect();
        assert_eq!(names, ["first", "ten", "a", "b", "minus-two", "minus-one", "last"]);
        assert_eq!(parse(&serde_json::json!("first")), Ok(Order::Number(0)));
        assert_eq!(parse(&serde_json::json!("soon")), Err("\"soon\"".into()));
    }
}
