//! The stream's shards as ListShards describes them: hash-key ranges and lineage (a split shard
//! has one parent, a merged shard two). Shared by the assignment, the readers and the operator.

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-…`.
    pub shard_id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second parent of a merge.
    pub adjacent_parent: Option<String>,
    /// First hash key it owns.
    pub starting_hash_key: u128,
    /// Last hash key it owns (inclusive).
    pub ending_hash_key: u128,
    /// Set once the shard is closed (split or merged): no record comes after it.
    pub ending_sequence_number: Option<String>,
}

impl ShardInfo {
    /// The shards this one was created from.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent.iter().chain(self.adjacent_parent.iter()).map(String::as_str)
    }

    /// Whether the shard still accepts records.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }
}
