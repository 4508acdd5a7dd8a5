//! Pagination of the list endpoints and `/v1/usage`: the `limit` and `cursor` query parameters,
//! one page cut out of items by their position in creation order, the documented envelope
//! (`items`, `next_cursor`, `has_more`, `total_count`), and cursors that look random, belong to
//! one listing and expire.

use serde_json::{Value, json};

use super::clock::Now;
use super::limiter::RATE_WINDOW_SECS;
use super::wire::{ApiError, bad_request, parse_pairs};

/// The documented upper bound of the `limit` query parameter.
pub(super) const MAX_LIMIT: usize = 100;
/// Cursors expire (the docs say so, and the rotator must never store one); ten minutes is long
/// enough for any listing and short enough that a stored cursor fails in a long-running test.
const CURSOR_TTL_SECS: u64 = 600;

/// Which listing a cursor belongs to, so a cursor cannot be replayed against another list.
#[derive(Clone, Copy)]
pub(super) enum CursorTag {
    Clients,
    Keys,
    Usage,
}

impl CursorTag {
    fn letter(self) -> char {
        match self {
            CursorTag::Clients => 'c',
            CursorTag::Keys => 'k',
            CursorTag::Usage => 'u',
        }
    }
}

pub(super) struct Page {
    /// Items strictly after this position; `None` for the first page.
    after: Option<u64>,
    size: usize,
}

impl Page {
    /// The page a query string asks for; `page_size` is both the default and the largest page
    /// served.
    pub(super) fn from_query(query: &str, page_size: usize, tag: CursorTag, now: Now) -> Result<Page, ApiError> {
        let pairs = parse_pairs(query).ok_or_else(|| bad_request("malformed query string"))?;
        let mut page = Page { after: None, size: page_size };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    let limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}")))?;
                    // The configured page size doubles as the server's maximum.
                    page.size = limit.min(page_size);
                }
                "cursor" if !value.is_empty() => page.after = Some(decode_cursor(&value, tag, now)?),
                _ => {}
            }
        }
        Ok(page)
    }
}

/// Cuts one page out of `items` (ascending positions) and builds the documented envelope.
pub(super) fn paginate(
    items: impl Iterator<Item = (u64, Value)>,
    page: Page,
    total: usize,
    tag: CursorTag,
    now: Now,
) -> Value {
    let mut rest = items.filter(|(position, _)| page.after.is_none_or(|after| *position > after));
    let chunk: Vec<(u64, Value)> = rest.by_ref().take(page.size).collect();
    let has_more = rest.next().is_some();
    let next_cursor =
        if has_more { chunk.last().map(|(position, _)| encode_cursor(tag, *position, now)) } else { None };
    let items: Vec<Value> = chunk.into_iter().map(|(_, item)| item).collect();
    json!({
        "items": items,
        "next_cursor": next_cursor,
        "has_more": has_more,
        "total_count": total,
    })
}

/// A cursor is the list tag, a random salt and the masked (position, issue time). It looks
/// random on purpose: clients must treat it as opaque, and the issue time lets it expire.
fn encode_cursor(tag: CursorTag, position: u64, now: Now) -> String {
    let salt: u32 = rand::random();
    let mask = mix(u64::from(salt));
    format!("{}{salt:08x}{:016x}{:016x}", tag.letter(), position ^ mask, now.unix ^ mix(mask))
}

fn decode_cursor(cursor: &str, tag: CursorTag, now: Now) -> Result<u64, ApiError> {
    let invalid = || bad_request("invalid cursor");
    let digits = cursor.strip_prefix(tag.letter()).ok_or_else(invalid)?;
    if digits.len() != 40 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let hex = |range: std::ops::Range<usize>| u64::from_str_radix(&digits[range], 16).map_err(|_| invalid());
    let mask = mix(hex(0..8)?);
    let position = hex(8..24)? ^ mask;
    let issued = hex(24..40)? ^ mix(mask);
    // A tampered cursor decodes to a random issue time, almost surely far from now.
    if issued > now.unix + RATE_WINDOW_SECS {
        return Err(invalid());
    }
    if now.unix.saturating_sub(issued) > CURSOR_TTL_SECS {
        return Err(bad_request("cursor expired, restart the listing from the first page"));
    }
    Ok(position)
}

/// The SplitMix64 finaliser: a cheap bijective scramble, enough to make cursors look opaque.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
