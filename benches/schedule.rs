//! The cost of finding a cron expression's next firing (`cargo bench --bench schedule`), which
//! validation (the shortest gap of every cron policy) and every daemon pass pay: common and rare
//! expressions, in UTC and across a DST change, each searched 1,000 times; the mean per search
//! is printed. A yearly expression is the worst case the search meets.

use std::time::Instant;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rotator::schedule::Cron;

fn main() {
    let from: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
    let cases: [(&str, Tz); 6] = [
        ("*/15 * * * *", Tz::UTC),
        ("0 3 * * SUN", Tz::Europe__Berlin),
        ("30 2 * * *", Tz::America__New_York),
        ("0 0 */2 * mon", Tz::UTC),
        ("0 3 1 1 *", Tz::UTC),
        ("0 0 29 2 *", Tz::UTC),
    ];
    for (text, tz) in cases {
        let cron = Cron::parse(text).unwrap();
        let runs = 1_000;
        let started = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(cron.next_after(from, tz));
        }
        let mean = started.elapsed().as_secs_f64() / f64::from(runs) * 1e6;
        println!("next firing of `{text}` in {tz}: {mean:.1} µs per search ({runs} searches)");
    }
}
