//! Kafka topic names by topic id, node-wide: Fetch requests v13+ name their topics only by
//! id, and the names come from Metadata responses, often on another connection (a client's
//! bootstrap connection asks for metadata, its connection to the partition leader fetches).
//! One registry per agent, fed every Kafka exchange in the order they complete.

use rustc_hash::FxHashMap;

use super::KafkaExchange;

/// Names kept; when full, all are dropped and relearnt from the next Metadata responses.
pub const MAX_TOPIC_NAMES: usize = 65536;

/// Topic names by id, bounded by [`MAX_TOPIC_NAMES`].
#[derive(Debug, Default)]
pub struct TopicNames {
    names: FxHashMap<[u8; 16], String>,
}

impl TopicNames {
    /// Learns the topic ids a Metadata exchange named, then names the topics of `exchange`
    /// that carry only an id.
    pub fn learn_and_resolve(&mut self, exchange: &mut KafkaExchange) {
        for (id, name) in &exchange.metadata_topics {
            if self.names.len() >= MAX_TOPIC_NAMES {
                self.names.clear();
            }
            self.names.insert(*id, name.clone());
        }
        for topic in exchange.topics.iter_mut().filter(|t| t.name.is_none()) {
            if let Some(name) = topic.topic_id.and_then(|id| self.names.get(&id)) {
                topic.name = Some(name.clone());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
