//! The Kafka API table: names, the first flexible version, and the highest version seen in
//! the wild, per API key.
//!
//! Sources: the Kafka protocol guide (<https://kafka.apache.org/protocol>) and the message
//! definitions under `clients/src/main/resources/common/message/` (`"flexibleVersions"`,
//! `"validVersions"`), as of Kafka 4.0. Keys above [`MAX_API_KEY`] are reported as
//! [`UNKNOWN_API`].

/// Highest API key with a name here (ListClientMetricsResources).
pub const MAX_API_KEY: i16 = 74;
/// Name of an API key not in the table.
pub const UNKNOWN_API: &str = "Unknown";

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const METADATA: i16 = 3;
pub const CONTROLLED_SHUTDOWN: i16 = 7;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const LIST_GROUPS: i16 = 16;
pub const SASL_HANDSHAKE: i16 = 17;
pub const API_VERSIONS: i16 = 18;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const ADD_OFFSETS_TO_TXN: i16 = 25;
pub const END_TXN: i16 = 26;
pub const SASL_AUTHENTICATE: i16 = 36;
pub const DESCRIBE_CLUSTER: i16 = 60;

/// Flexible versions (compact strings, tagged fields, request header v2) never started.
const NEVER: i16 = i16::MAX;

/// (name, first flexible version, highest known version).
///
/// The highest version is what Kafka 4.0 (or the KIP that is about to ship it) defines; the
/// first request on a connection must not exceed it by more than [`VERSION_HEADROOM`].
const APIS: [(&str, i16, i16); MAX_API_KEY as usize + 1] = [
    ("Produce", 9, 13),
    ("Fetch", 12, 17),
    ("ListOffsets", 6, 10),
    ("Metadata", 9, 13),
    ("LeaderAndIsr", 4, 7),
    ("StopReplica", 2, 4),
    ("UpdateMetadata", 6, 8),
    ("ControlledShutdown", 3, 3),
    ("OffsetCommit", 8, 10),
    ("OffsetFetch", 6, 10),
    ("FindCoordinator", 3, 6),
    ("JoinGroup", 6, 9),
    ("Heartbeat", 4, 4),
    ("LeaveGroup", 4, 5),
    ("SyncGroup", 4, 5),
    ("DescribeGroups", 5, 6),
    ("ListGroups", 3, 5),
    ("SaslHandshake", NEVER, 1),
    ("ApiVersions", 3, 4),
    ("CreateTopics", 5, 7),
    ("DeleteTopics", 4, 6),
    ("DeleteRecords", 2, 2),
    ("InitProducerId", 2, 5),
    ("OffsetForLeaderEpoch", 4, 4),
    ("AddPartitionsToTxn", 3, 5),
    ("AddOffsetsToTxn", 3, 4),
    ("EndTxn", 3, 5),
    ("WriteTxnMarkers", 1, 1),
    ("TxnOffsetCommit", 3, 5),
    ("DescribeAcls", 2, 3),
    ("CreateAcls", 2, 3),
    ("DeleteAcls", 2, 3),
    ("DescribeConfigs", 4, 4),
    ("AlterConfigs", 2, 2),
    ("AlterReplicaLogDirs", 2, 2),
    ("DescribeLogDirs", 2, 4),
    ("SaslAuthenticate", 2, 2),
    ("CreatePartitions", 2, 3),
    ("CreateDelegationToken", 2, 3),
    ("RenewDelegationToken", 2, 2),
    ("ExpireDelegationToken", 2, 2),
    ("DescribeDelegationToken", 2, 3),
    ("DeleteGroups", 2, 2),
    ("ElectLeaders", 2, 2),
    ("IncrementalAlterConfigs", 1, 1),
    ("AlterPartitionReassignments", 0, 1),
    ("ListPartitionReassignments", 0, 0),
    ("OffsetDelete", NEVER, 0),
    ("DescribeClientQuotas", 1, 1),
    ("AlterClientQuotas", 1, 1),
    ("DescribeUserScramCredentials", 0, 0),
    ("AlterUserScramCredentials", 0, 0),
    ("Vote", 0, 2),
    ("BeginQuorumEpoch", 1, 1),
    ("EndQuorumEpoch", 1, 1),
    ("DescribeQuorum", 0, 2),
    ("AlterPartition", 0, 3),
    ("UpdateFeatures", 0, 2),
    ("Envelope", 0, 0),
    ("FetchSnapshot", 0, 1),
    ("DescribeCluster", 0, 2),
    ("DescribeProducers", 0, 0),
    ("BrokerRegistration", 0, 4),
    ("BrokerHeartbeat", 0, 1),
    ("UnregisterBroker", 0, 0),
    ("DescribeTransactions", 0, 0),
    ("ListTransactions", 0, 2),
    ("AllocateProducerIds", 0, 0),
    ("ConsumerGroupHeartbeat", 0, 1),
    ("ConsumerGroupDescribe", 0, 1),
    ("ControllerRegistration", 0, 0),
    ("GetTelemetrySubscriptions", 0, 0),
    ("PushTelemetry", 0, 0),
    ("AssignReplicasToDirs", 0, 0),
    ("ListClientMetricsResources", 0, 0),
];

/// Versions above the highest known one still accepted on a connection's first request, so
/// that a broker a few releases newer than this table is still recognised.
pub const VERSION_HEADROOM: i16 = 4;
/// No API has come close to this many versions; a first request above it is not Kafka.
pub const MAX_SANE_VERSION: i16 = 20;

fn entry(api_key: i16) -> Option<&'static (&'static str, i16, i16)> {
    usize::try_from(api_key).ok().and_then(|k| APIS.get(k))
}

/// The protocol guide's name for an API key, or [`UNKNOWN_API`].
pub fn name(api_key: i16) -> &'static str {
    entry(api_key).map_or(UNKNOWN_API, |e| e.0)
}

/// Whether this version of the API uses flexible encoding (request header v2, response header
/// v1 except for ApiVersions, compact strings and arrays, tagged fields). Unknown API keys are
/// taken as not flexible: only their header is decoded, and the client id sits in the same
/// place in header v1 and v2.
pub fn is_flexible(api_key: i16, api_version: i16) -> bool {
    entry(api_key).is_some_and(|e| api_version >= e.1)
}

/// Request header version: 0 only for ControlledShutdown v0, 2 for flexible versions, else 1.
pub fn request_header_version(api_key: i16, api_version: i16) -> u8 {
    if api_key == CONTROLLED_SHUTDOWN && api_version == 0 {
        0
    } else if is_flexible(api_key, api_version) {
        2
    } else {
        1
    }
}

/// Response header version: 1 (with tagged fields) for flexible versions, except that
/// ApiVersions responses always use header v0 (a client must be able to read the answer
/// whatever version it asked for).
pub fn response_header_version(api_key: i16, api_version: i16) -> u8 {
    if api_key != API_VERSIONS && is_flexible(api_key, api_version) {
        1
    } else {
        0
    }
}

/// Whether a request header could start a Kafka connection: a named API key and a version no
/// higher than a few past the known maximum for that API.
pub fn plausible(api_key: i16, api_version: i16) -> bool {
    entry(api_key).is_some_and(|e| {
        (0..=MAX_SANE_VERSION).contains(&api_version)
            && api_version <= e.2.saturating_add(VERSION_HEADROOM)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spot_checks() {
        assert_eq!(name(PRODUCE), "Produce");
        assert_eq!(name(API_VERSIONS), "ApiVersions");
        assert_eq!(name(DESCRIBE_CLUSTER), "DescribeCluster");
        assert_eq!(name(MAX_API_KEY), "ListClientMetricsResources");
        assert_eq!(name(MAX_API_KEY + 1), UNKNOWN_API);
        assert_eq!(name(-1), UNKNOWN_API);
        let flex = [
            (PRODUCE, 9),
            (FETCH, 12),
            (LIST_OFFSETS, 6),
            (METADATA, 9),
            (OFFSET_COMMIT, 8),
            (OFFSET_FETCH, 6),
            (FIND_COORDINATOR, 3),
            (JOIN_GROUP, 6),
            (HEARTBEAT, 4),
            (LEAVE_GROUP, 4),
            (SYNC_GROUP, 4),
            (15, 5),
            (LIST_GROUPS, 3),
            (API_VERSIONS, 3),
            (19, 5),
            (20, 4),
            (INIT_PRODUCER_ID, 2),
        ];
        for (key, first) in flex {
            assert!(!is_flexible(key, first - 1), "{}", name(key));
            assert!(is_flexible(key, first), "{}", name(key));
        }
        assert!(!is_flexible(SASL_HANDSHAKE, 1));
        assert!(!is_flexible(MAX_API_KEY + 1, 5));
        assert_eq!(request_header_version(CONTROLLED_SHUTDOWN, 0), 0);
        assert_eq!(request_header_version(CONTROLLED_SHUTDOWN, 1), 1);
        assert_eq!(request_header_version(API_VERSIONS, 3), 2);
        assert_eq!(response_header_version(API_VERSIONS, 3), 0);
        assert_eq!(response_header_version(METADATA, 12), 1);
        assert_eq!(response_header_version(METADATA, 8), 0);
    }
}
