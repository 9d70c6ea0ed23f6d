//! Request and response bodies of the APIs the decoder looks into.
//!
//! Each parser walks the message schema of its version (field presence per the message
//! definitions in Kafka's `clients/src/main/resources/common/message/`) and records what it
//! finds in a [`Summary`] as it goes, so a body cut by a capture gap still yields everything
//! before the cut. Parsers stop after the last field of interest: trailing fields are not read.

use super::apis;
use super::wire::{Read, Reader, Stop};
use super::{capped_string, TopicStats, MAX_METADATA_TOPICS, MAX_NAME_BYTES, MAX_TOPICS};

/// Highest version whose body layout is known, per API with a body parser. Newer versions are
/// reported with their header only.
fn max_body_version(api_key: i16) -> Option<i16> {
    Some(match api_key {
        apis::PRODUCE => 13,
        apis::FETCH => 17,
        apis::LIST_OFFSETS => 10,
        apis::METADATA => 13,
        apis::OFFSET_COMMIT => 9,
        apis::OFFSET_FETCH => 9,
        apis::FIND_COORDINATOR => 6,
        // Responses that lead with (throttle_time_ms,) error_code: stable across versions.
        apis::JOIN_GROUP
        | apis::HEARTBEAT
        | apis::LEAVE_GROUP
        | apis::SYNC_GROUP
        | apis::LIST_GROUPS
        | apis::SASL_HANDSHAKE
        | apis::API_VERSIONS
        | apis::INIT_PRODUCER_ID
        | apis::ADD_OFFSETS_TO_TXN
        | apis::END_TXN
        | apis::SASL_AUTHENTICATE
        | apis::DESCRIBE_CLUSTER => i16::MAX,
        _ => return None,
    })
}

/// Whether the decoder knows this API version's body (so its cut means lost information).
pub fn known(api_key: i16, api_version: i16) -> bool {
    max_body_version(api_key).is_some_and(|max| api_version <= max)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// What one exchange's bodies showed, built up request first, then response.
#[derive(Debug)]
pub struct Summary {
    pub topics: Vec<TopicStats>,
    /// Partitions seen per topic in the response, merged into `topics` by [`Summary::finish`].
    resp_partitions: Vec<u32>,
    phase: Phase,
    pub acks: Option<i16>,
    /// The response's top-level error code (first non-zero one for per-group/coordinator
    /// lists).
    pub top_error: i16,
    /// First non-zero per-topic or per-partition error code in the response.
    pub first_error: i16,
    pub metadata_topics: Vec<([u8; 16], String)>,
    /// A `records` field (a Produce request's, a Fetch response's) was neither captured whole
    /// nor counted by the kernel.
    pub inexact_records: bool,
}

impl Summary {
    pub fn new() -> Self {
        Summary {
            topics: Vec::new(),
            resp_partitions: Vec::new(),
            phase: Phase::Request,
            acks: None,
            top_error: 0,
            first_error: 0,
            metadata_topics: Vec::new(),
            inexact_records: false,
        }
    }

    /// Switches to recording the response.
    pub fn start_response(&mut self) {
        self.phase = Phase::Response;
        self.resp_partitions = vec![0; self.topics.len()];
    }

    /// Partition counts: the request's, or the response's where larger (a Metadata or
    /// OffsetFetch for "all topics" names partitions only in the response).
    pub fn finish(&mut self) {
        for (t, &n) in self.topics.iter_mut().zip(&self.resp_partitions) {
            t.partitions = t.partitions.max(n);
        }
        self.resp_partitions.clear();
    }

    /// The exchange's error code: the top-level one if non-zero, else the first per-topic or
    /// per-partition one.
    pub fn error_code(&self) -> i16 {
        if self.top_error != 0 {
            self.top_error
        } else {
            self.first_error
        }
    }

    /// Finds or adds a topic; None when over [`MAX_TOPICS`] or when neither name nor id is known.
    fn topic(&mut self, name: Option<&[u8]>, id: Option<[u8; 16]>) -> Option<usize> {
        let id = id.filter(|id| *id != [0; 16]);
        let name = name.map(|n| capped_string(n, MAX_NAME_BYTES));
        if name.is_none() && id.is_none() {
            return None;
        }
        let found = self.topics.iter().position(|t| match (&name, &id) {
            (Some(n), _) if t.name.as_ref() == Some(n) => true,
            (_, Some(i)) => t.topic_id.as_ref() == Some(i),
            _ => false,
        });
        if let Some(i) = found {
            let t = &mut self.topics[i];
            if t.topic_id.is_none() {
                t.topic_id = id;
            }
            if t.name.is_none() {
                t.name = name;
            }
            return Some(i);
        }
        if self.topics.len() >= MAX_TOPICS {
            return None;
        }
        self.topics.push(TopicStats {
            name,
            topic_id: id,
            partitions: 0,
            record_count: 0,
            error_code: 0,
        });
        if self.phase == Phase::Response {
            self.resp_partitions.push(0);
        }
        Some(self.topics.len() - 1)
    }

    /// Reads a topic reference (name, or id from `by_id` versions) and finds or adds it.
    fn read_topic(&mut self, r: &mut Reader<'_>, by_id: bool, flex: bool) -> Read<Option<usize>> {
        if by_id {
            let id = r.uuid()?;
            Ok(self.topic(None, Some(id)))
        } else {
            let name = r.string(flex)?;
            Ok(self.topic(name, None))
        }
    }

    fn partition(&mut self, t: Option<usize>) {
        let Some(t) = t else { return };
        match self.phase {
            Phase::Request => self.topics[t].partitions += 1,
            Phase::Response => {
                if let Some(n) = self.resp_partitions.get_mut(t) {
                    *n += 1;
                }
            }
        }
    }

    fn records(&mut self, t: Option<usize>, n: u64) {
        if let Some(t) = t {
            self.topics[t].record_count = self.topics[t].record_count.saturating_add(n);
        }
    }

    fn error(&mut self, t: Option<usize>, code: i16) {
        if code == 0 {
            return;
        }
        if let Some(t) = t {
            if self.topics[t].error_code == 0 {
                self.topics[t].error_code = code;
            }
        }
        if self.first_error == 0 {
            self.first_error = code;
        }
    }

    /// Reads an `error_code int16` of topic `t`.
    fn read_error(&mut self, r: &mut Reader<'_>, t: Option<usize>) -> Read<()> {
        let err = r.i16()?;
        self.error(t, err);
        Ok(())
    }

    fn top_error(&mut self, code: i16) {
        if self.top_error == 0 {
            self.top_error = code;
        }
    }
}

/// Decodes a request body (after the header) into `s`. Stops quietly at the end of the
/// captured bytes; the Err says why it stopped early.
pub fn request(api_key: i16, v: i16, r: &mut Reader<'_>, s: &mut Summary) -> Read<()> {
    if !known(api_key, v) {
        return Ok(());
    }
    let flex = apis::is_flexible(api_key, v);
    match api_key {
        apis::PRODUCE => produce_request(r, v, flex, s),
        apis::FETCH => fetch_request(r, v, flex, s),
        apis::LIST_OFFSETS => list_offsets_request(r, v, flex, s),
        apis::METADATA => metadata_request(r, v, flex, s),
        apis::OFFSET_COMMIT => offset_commit_request(r, v, flex, s),
        apis::OFFSET_FETCH => offset_fetch_request(r, v, flex, s),
        _ => Ok(()),
    }
}

/// Decodes a response body (after the header) into `s`.
pub fn response(api_key: i16, v: i16, r: &mut Reader<'_>, s: &mut Summary) -> Read<()> {
    if !known(api_key, v) {
        return Ok(());
    }
    let flex = apis::is_flexible(api_key, v);
    match api_key {
        apis::PRODUCE => produce_response(r, v, flex, s),
        apis::FETCH => fetch_response(r, v, flex, s),
        apis::LIST_OFFSETS => list_offsets_response(r, v, flex, s),
        apis::METADATA => metadata_response(r, v, flex, s),
        apis::OFFSET_COMMIT => offset_commit_response(r, v, flex, s),
        apis::OFFSET_FETCH => offset_fetch_response(r, v, flex, s),
        apis::FIND_COORDINATOR => find_coordinator_response(r, v, flex, s),
        apis::SASL_HANDSHAKE | apis::API_VERSIONS | apis::SASL_AUTHENTICATE => {
            error_after_throttle(r, false, s)
        }
        apis::JOIN_GROUP => error_after_throttle(r, v >= 2, s),
        apis::HEARTBEAT | apis::LEAVE_GROUP | apis::SYNC_GROUP | apis::LIST_GROUPS => {
            error_after_throttle(r, v >= 1, s)
        }
        apis::INIT_PRODUCER_ID
        | apis::ADD_OFFSETS_TO_TXN
        | apis::END_TXN
        | apis::DESCRIBE_CLUSTER => error_after_throttle(r, true, s),
        _ => Ok(()),
    }
}

/// `[throttle_time_ms int32] error_code int16 ...`
fn error_after_throttle(r: &mut Reader<'_>, throttle: bool, s: &mut Summary) -> Read<()> {
    if throttle {
        r.i32()?;
    }
    s.top_error(r.i16()?);
    Ok(())
}

/// Runs `f` once per element of a (nullable) array.
fn each(
    r: &mut Reader<'_>,
    flex: bool,
    mut f: impl FnMut(&mut Reader<'_>) -> Read<()>,
) -> Read<()> {
    let n = r.array_len(flex)?.unwrap_or(0);
    for _ in 0..n {
        f(r)?;
    }
    Ok(())
}

/// `topics: [topic, partitions: [partition_index int32, ...]]`, the nesting most APIs share:
/// the topic is a name, or an id where `by_id`; `f` reads a partition's fields after its index.
/// Both levels end in tagged fields (flexible versions).
fn topic_partitions(
    r: &mut Reader<'_>,
    by_id: bool,
    flex: bool,
    s: &mut Summary,
    mut f: impl FnMut(&mut Reader<'_>, &mut Summary, Option<usize>) -> Read<()>,
) -> Read<()> {
    each(r, flex, |r| {
        let t = s.read_topic(r, by_id, flex)?;
        each(r, flex, |r| {
            r.i32()?; // partition_index
            s.partition(t);
            f(r, s, t)?;
            r.tagged_fields(flex)
        })?;
        r.tagged_fields(flex)
    })
}

/// A `records` field (nullable bytes holding record batches): counts its records (from the
/// captured batch headers, or the kernel's count of a walked field), then skips the field.
fn records(r: &mut Reader<'_>, flex: bool, s: &mut Summary, t: Option<usize>) -> Read<()> {
    let Some(len) = r.bytes_len(flex)? else {
        return Ok(());
    };
    let (n, exact, passed) = r.records(len);
    s.records(t, n);
    s.inexact_records |= !exact;
    passed
}

/// Size of a magic v2 record batch header up to and including `recordsCount`.
const BATCH_HEADER: usize = 61;
/// Offset of `magic` in a batch (after baseOffset, batchLength, partitionLeaderEpoch).
const MAGIC_AT: usize = 16;
/// Bytes of a batch (or legacy message) counted by its length field: baseOffset + length.
const LOG_OVERHEAD: usize = 12;

/// Records in concatenated record batches: `captured` is the captured prefix of a records
/// field of `len` bytes. Magic v2 batches contribute their `recordsCount` header (no
/// decompression); legacy (magic 0/1) message-set entries count one each (a compressed legacy
/// wrapper counts as one). A batch that extends past the field (brokers may end a Fetch
/// response with a partial batch, which clients discard) is not counted; a batch whose header
/// was not captured cannot be.
pub fn count_records(captured: &[u8], len: usize) -> u64 {
    let mut at = 0usize;
    let mut total = 0u64;
    while let Some(head) = captured.get(at..at + LOG_OVERHEAD + 5) {
        let batch_len = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let Ok(batch_len) = usize::try_from(batch_len) else {
            break;
        };
        let end = at.saturating_add(LOG_OVERHEAD).saturating_add(batch_len);
        if end > len {
            break;
        }
        match head[MAGIC_AT] {
            2 => {
                let Some(h) = captured.get(at..at + BATCH_HEADER) else {
                    break;
                };
                if batch_len < BATCH_HEADER - LOG_OVERHEAD {
                    break;
                }
                let n = i32::from_be_bytes([h[57], h[58], h[59], h[60]]);
                total += u64::try_from(n).unwrap_or(0);
            }
            0 | 1 => total += 1,
            _ => break,
        }
        at = end;
    }
    total
}

// ---- Produce (api key 0) ----

fn produce_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 3 {
        r.skip_string(flex)?; // transactional_id
    }
    s.acks = Some(r.i16()?);
    r.i32()?; // timeout_ms
    topic_partitions(r, v >= 13, flex, s, |r, s, t| records(r, flex, s, t))
}

fn produce_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    topic_partitions(r, v >= 13, flex, s, |r, s, t| {
        s.read_error(r, t)?;
        r.i64()?; // base_offset
        if v >= 2 {
            r.i64()?; // log_append_time_ms
        }
        if v >= 5 {
            r.i64()?; // log_start_offset
        }
        if v >= 8 {
            each(r, flex, |r| {
                r.i32()?; // batch_index
                r.skip_string(flex)?; // batch_index_error_message
                r.tagged_fields(flex)
            })?;
            r.skip_string(flex)?; // error_message
        }
        Ok(())
    })
}

// ---- Fetch (1) ----

fn fetch_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v <= 14 {
        r.i32()?; // replica_id (a tagged field from v15)
    }
    r.i32()?; // max_wait_ms
    r.i32()?; // min_bytes
    if v >= 3 {
        r.i32()?; // max_bytes
    }
    if v >= 4 {
        r.i8()?; // isolation_level
    }
    if v >= 7 {
        r.i32()?; // session_id
        r.i32()?; // session_epoch
    }
    topic_partitions(r, v >= 13, flex, s, |r, _, _| {
        if v >= 9 {
            r.i32()?; // current_leader_epoch
        }
        r.i64()?; // fetch_offset
        if v >= 12 {
            r.i32()?; // last_fetched_epoch
        }
        if v >= 5 {
            r.i64()?; // log_start_offset
        }
        r.i32()?; // partition_max_bytes
        Ok(())
    })
}

fn fetch_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 1 {
        r.i32()?; // throttle_time_ms
    }
    if v >= 7 {
        s.top_error(r.i16()?);
        r.i32()?; // session_id
    }
    topic_partitions(r, v >= 13, flex, s, |r, s, t| {
        s.read_error(r, t)?;
        r.i64()?; // high_watermark
        if v >= 4 {
            r.i64()?; // last_stable_offset
        }
        if v >= 5 {
            r.i64()?; // log_start_offset
        }
        if v >= 4 {
            each(r, flex, |r| {
                r.i64()?; // producer_id
                r.i64()?; // first_offset
                r.tagged_fields(flex)
            })?;
        }
        if v >= 11 {
            r.i32()?; // preferred_read_replica
        }
        records(r, flex, s, t)?;
        Ok(())
    })
}

// ---- ListOffsets (2) ----

fn list_offsets_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    r.i32()?; // replica_id
    if v >= 2 {
        r.i8()?; // isolation_level
    }
    topic_partitions(r, false, flex, s, |r, _, _| {
        if v >= 4 {
            r.i32()?; // current_leader_epoch
        }
        r.i64()?; // timestamp
        if v == 0 {
            r.i32()?; // max_num_offsets
        }
        Ok(())
    })
}

fn list_offsets_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 2 {
        r.i32()?; // throttle_time_ms
    }
    topic_partitions(r, false, flex, s, |r, s, t| {
        s.read_error(r, t)?;
        if v == 0 {
            r.skip_fixed_array(flex, 8)?; // old_style_offsets
        } else {
            r.i64()?; // timestamp
            r.i64()?; // offset
        }
        if v >= 4 {
            r.i32()?; // leader_epoch
        }
        Ok(())
    })
}

// ---- Metadata (3) ----

fn metadata_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    each(r, flex, |r| {
        let id = if v >= 10 { Some(r.uuid()?) } else { None };
        let name = r.string(flex)?;
        s.topic(name, id);
        r.tagged_fields(flex)
    })
}

fn metadata_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 3 {
        r.i32()?; // throttle_time_ms
    }
    each(r, flex, |r| {
        r.i32()?; // node_id
        r.skip_string(flex)?; // host
        r.i32()?; // port
        if v >= 1 {
            r.skip_string(flex)?; // rack
        }
        r.tagged_fields(flex)
    })?;
    if v >= 2 {
        r.skip_string(flex)?; // cluster_id
    }
    if v >= 1 {
        r.i32()?; // controller_id
    }
    each(r, flex, |r| {
        let err = r.i16()?;
        let name = r.string(flex)?;
        let id = if v >= 10 { Some(r.uuid()?) } else { None };
        if let (Some(id), Some(name)) = (id, name) {
            if id != [0; 16] && s.metadata_topics.len() < MAX_METADATA_TOPICS {
                s.metadata_topics
                    .push((id, capped_string(name, MAX_NAME_BYTES)));
            }
        }
        let t = s.topic(name, id);
        s.error(t, err);
        if v >= 1 {
            r.i8()?; // is_internal
        }
        each(r, flex, |r| {
            let err = r.i16()?;
            s.partition(t);
            s.error(t, err);
            r.i32()?; // partition_index
            r.i32()?; // leader_id
            if v >= 7 {
                r.i32()?; // leader_epoch
            }
            r.skip_fixed_array(flex, 4)?; // replica_nodes
            r.skip_fixed_array(flex, 4)?; // isr_nodes
            if v >= 5 {
                r.skip_fixed_array(flex, 4)?; // offline_replicas
            }
            r.tagged_fields(flex)
        })?;
        if v >= 8 {
            r.i32()?; // topic_authorized_operations
        }
        r.tagged_fields(flex)
    })?;
    if (8..=10).contains(&v) {
        r.i32()?; // cluster_authorized_operations
    }
    if v >= 13 {
        s.top_error(r.i16()?);
    }
    Ok(())
}

// ---- OffsetCommit (8) ----

fn offset_commit_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    r.skip_string(flex)?; // group_id
    if v >= 1 {
        r.i32()?; // generation_id_or_member_epoch
        r.skip_string(flex)?; // member_id
    }
    if v >= 7 {
        r.skip_string(flex)?; // group_instance_id
    }
    if (2..=4).contains(&v) {
        r.i64()?; // retention_time_ms
    }
    topic_partitions(r, false, flex, s, |r, _, _| {
        r.i64()?; // committed_offset
        if v >= 6 {
            r.i32()?; // committed_leader_epoch
        }
        if v == 1 {
            r.i64()?; // commit_timestamp
        }
        r.skip_string(flex)?; // committed_metadata
        Ok(())
    })
}

fn offset_commit_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 3 {
        r.i32()?; // throttle_time_ms
    }
    topic_partitions(r, false, flex, s, |r, s, t| {
        s.read_error(r, t)?;
        Ok(())
    })
}

// ---- OffsetFetch (9) ----

/// `topics: [name, partition_indexes []int32]` of an OffsetFetch request.
fn offset_fetch_request_topics(r: &mut Reader<'_>, flex: bool, s: &mut Summary) -> Read<()> {
    each(r, flex, |r| {
        let t = s.read_topic(r, false, flex)?;
        let n = r.array_len(flex)?.unwrap_or(0);
        r.skip(n.checked_mul(4).ok_or(Stop::Bad)?)?;
        if let Some(t) = t {
            let t = &mut s.topics[t];
            t.partitions = t
                .partitions
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
        r.tagged_fields(flex)
    })
}

fn offset_fetch_request(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v <= 7 {
        r.skip_string(flex)?; // group_id
        return offset_fetch_request_topics(r, flex, s);
    }
    each(r, flex, |r| {
        r.skip_string(flex)?; // group_id
        if v >= 9 {
            r.skip_string(flex)?; // member_id
            r.i32()?; // member_epoch
        }
        offset_fetch_request_topics(r, flex, s)?;
        r.tagged_fields(flex)
    })
}

/// `topics: [name, partitions: [index, offset, epoch, metadata, error_code]]` of an
/// OffsetFetch response.
fn offset_fetch_response_topics(
    r: &mut Reader<'_>,
    v: i16,
    flex: bool,
    s: &mut Summary,
) -> Read<()> {
    topic_partitions(r, false, flex, s, |r, s, t| {
        r.i64()?; // committed_offset
        if v >= 5 {
            r.i32()?; // committed_leader_epoch
        }
        r.skip_string(flex)?; // metadata
        s.read_error(r, t)?;
        Ok(())
    })
}

fn offset_fetch_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 3 {
        r.i32()?; // throttle_time_ms
    }
    if v <= 7 {
        offset_fetch_response_topics(r, v, flex, s)?;
        if v >= 2 {
            s.top_error(r.i16()?);
        }
        return Ok(());
    }
    each(r, flex, |r| {
        r.skip_string(flex)?; // group_id
        offset_fetch_response_topics(r, v, flex, s)?;
        s.top_error(r.i16()?);
        r.tagged_fields(flex)
    })
}

// ---- FindCoordinator (10) ----

fn find_coordinator_response(r: &mut Reader<'_>, v: i16, flex: bool, s: &mut Summary) -> Read<()> {
    if v >= 1 {
        r.i32()?; // throttle_time_ms
    }
    if v <= 3 {
        s.top_error(r.i16()?);
        return Ok(());
    }
    each(r, flex, |r| {
        r.skip_string(flex)?; // key
        r.i32()?; // node_id
        r.skip_string(flex)?; // host
        r.i32()?; // port
        s.top_error(r.i16()?);
        r.skip_string(flex)?; // error_message
        r.tagged_fields(flex)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: i32, magic: u8) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        b.extend_from_slice(&0i32.to_be_bytes()); // batchLength, patched below
        b.extend_from_slice(&0i32.to_be_bytes()); // partitionLeaderEpoch
        b.push(magic);
        b.extend_from_slice(&[0; 4]); // crc
        b.extend_from_slice(&[0; 2]); // attributes
        b.extend_from_slice(&[0; 4]); // lastOffsetDelta
        b.extend_from_slice(&[0; 16]); // timestamps
        b.extend_from_slice(&[0; 14]); // producer id/epoch, base sequence
        b.extend_from_slice(&records.to_be_bytes());
        b.extend_from_slice(&[0xab; 20]); // the records themselves
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn counts_records_from_batch_headers() {
        let mut data = batch(3, 2);
        data.extend(batch(4, 2));
        assert_eq!(count_records(&data, data.len()), 7);
        // Second batch's header cut by the capture: only the first counts.
        assert_eq!(count_records(&data[..data.len() - 30], data.len()), 3);
        // Second batch's header captured, its records not: it counts.
        assert_eq!(count_records(&data[..data.len() - 10], data.len()), 7);
        // Second batch runs past the field (partial batch at the end of a fetch).
        assert_eq!(count_records(&data[..data.len() - 1], data.len() - 1), 3);
        // Unknown magic stops counting; legacy entries count one each.
        assert_eq!(count_records(&batch(5, 7), 81), 0);
        let mut legacy = batch(0, 1);
        legacy.extend(batch(0, 0));
        assert_eq!(count_records(&legacy, legacy.len()), 2);
        // Negative counts and lengths are not trusted.
        let mut neg = batch(-5, 2);
        assert_eq!(count_records(&neg, neg.len()), 0);
        neg[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(count_records(&neg, neg.len()), 0);
        assert_eq!(count_records(&[], 0), 0);
    }
}
