package protocol

// Messages between members. Every message names the incarnation that sent it; a
// member drops every message of an incarnation it has fenced (except heartbeats, which
// it answers with Fenced so that the sender learns it).
type Message interface{ Sender() Incarnation }

// Epoch orders the acquisitions of one partition: by N, then by the acquiring node's
// name, so two nodes never acquire a partition with equal epochs.
type Epoch struct {
	N    uint64
	Node string
}

// Less orders epochs.
func (e Epoch) Less(o Epoch) bool { return e.N < o.N || e.N == o.N && e.Node < o.Node }

// PartitionEpoch is a partition and an epoch of it.
type PartitionEpoch struct {
	Partition int
	Epoch     Epoch
}

// Heartbeat opens a lease round. Fences lists, per node, the highest incarnation the
// sender has fenced.
type Heartbeat struct {
	From   Incarnation
	Seq    uint64
	Expect int
	// Replicas is the sender's MemberConfig.Replicas (0: a quorum): members
	// write with the largest of theirs and read with the smallest, so that
	// nodes set differently (a rolling change of the setting) stay safe.
	Replicas int
	Wall     int64 // the sender's wall clock, Unix ns
	// Leaving: the sender is shutting down; it fires nothing and hands its partitions
	// to whoever asks. Members leave it out of their views.
	Leaving bool
	Fences  map[string]uint64
}

// HeartbeatAck answers a heartbeat; it counts for the lease unless Fenced or Mismatch.
type HeartbeatAck struct {
	From, To Incarnation
	Seq      uint64
	Fenced   bool  // the sender fenced To and will never ack it again
	Mismatch bool  // the sender expects another cluster size
	Wall     int64 // the sender's wall clock
	Echo     int64 // the heartbeat's Wall
}

// Acquire asks for partitions at new epochs.
type Acquire struct {
	From  Incarnation
	ID    uint64
	Parts []PartitionEpoch
}

// Grant answers an Acquire: what the sender granted (and, if it held them, released),
// what it refused with the epoch that beat the ask, the members it knows, and its
// watermarks of the granted partitions' rules.
type Grant struct {
	From, To   Incarnation
	ID         uint64
	Granted    []int
	Refused    []PartitionEpoch
	Members    []Incarnation // the members the granter knows, at their latest incarnations
	Watermarks []Watermark
}

// FireRecord is one fire on its way to the members: the slot, the count after it, its
// firer and the partition epoch it was fired (or, for an older incarnation's event,
// decided) under.
type FireRecord struct {
	Rule  int64
	Prev  int64 // the rule's watermark slot before this fire
	Slot  int64
	Count uint64
	Firer Incarnation
	Epoch Epoch
}

// Fired replicates fires; each member answers with a FiredAck.
type Fired struct {
	From    Incarnation
	Seq     uint64
	Records []FireRecord
}

// FiredAck acknowledges the records of a Fired message except those it lists as refused
// (their partition has a newer epoch here, or the slot is too far in the future).
type FiredAck struct {
	From, To Incarnation
	Seq      uint64
	Refused  []int
}

// EventRef names an event of an outbox: the fire it stands for.
type EventRef struct {
	Rule  int64
	Prev  int64 // the rule's watermark slot before this fire
	Slot  int64
	Count uint64
	Firer Incarnation
}

// Offer asks the holder of the events' partitions for a verdict on events that their
// firer could not deliver under the lease they were fired under.
type Offer struct {
	From   Incarnation
	ID     uint64
	Events []EventRef
}

// OfferReply gives a verdict per offered event, 0 where the sender does not hold the
// event's partition, and the partition's epoch where it does.
type OfferReply struct {
	From, To Incarnation
	ID       uint64
	Events   []EventRef
	Verdicts []Verdict
	Epochs   []Epoch
}

// Retired says the incarnation left: it fires nothing more and holds nothing. Clean:
// it handed every partition it held over (released it to an acquirer) first; else
// its partitions are taken over, and the members keep counting it in N.
type Retired struct {
	From  Incarnation
	Clean bool
}

func (m Heartbeat) Sender() Incarnation    { return m.From }
func (m HeartbeatAck) Sender() Incarnation { return m.From }
func (m Acquire) Sender() Incarnation      { return m.From }
func (m Grant) Sender() Incarnation        { return m.From }
func (m Fired) Sender() Incarnation        { return m.From }
func (m FiredAck) Sender() Incarnation     { return m.From }
func (m Offer) Sender() Incarnation        { return m.From }
func (m OfferReply) Sender() Incarnation   { return m.From }
func (m Retired) Sender() Incarnation      { return m.From }

// HandedEvent is a ready event of a node that leaves for good: its idempotency key,
// rule, slot and JSON body, as it would be POSTed.
type HandedEvent struct {
	Key  string
	Rule int64
	Slot int64
	Body []byte
}

// Handover gives a holder the ready events a leaving node could not deliver (the API
// was down): they were fired and replicated, so whoever delivers them delivers them
// once; the holder adds them to its outbox and acknowledges, and the leaver then
// deletes its copies.
type Handover struct {
	From   Incarnation
	ID     uint64
	Events []HandedEvent
}

// HandoverAck acknowledges a Handover: its events are in the sender's outbox.
type HandoverAck struct {
	From, To Incarnation
	ID       uint64
}

func (m Handover) Sender() Incarnation    { return m.From }
func (m HandoverAck) Sender() Incarnation { return m.From }

// Transfer copies a leaving member's store to a member before it retires cleanly
// (docs/protocol.md §7): chunk Chunk (from 0) of Chunks, with watermarks of its store
// and epochs it promised. The receiver merges both into its own and acknowledges the
// chunk. Once a quorum of the smaller cluster holds all of it, the fires the leaver
// stored survive its going, and the members may stop counting it in N.
type Transfer struct {
	From          Incarnation
	ID            uint64 // the sender's copy: its chunks are merged once each
	Chunk, Chunks int
	Epochs        []PartitionEpoch
	Watermarks    []Watermark
}

// TransferAck acknowledges a chunk of a Transfer: it is in the sender's store.
type TransferAck struct {
	From, To Incarnation
	ID       uint64
	Chunk    int
}

func (m Transfer) Sender() Incarnation    { return m.From }
func (m TransferAck) Sender() Incarnation { return m.From }
