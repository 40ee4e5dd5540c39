package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// The protocol bucket keeps what protocol.Member needs across restarts (since schema
// version 3):
//
//	incarnation    u64: the node's incarnation (NextIncarnation, SetIncarnation)
//	held/          partition u32 → epoch: the partitions held (SetHeld)
//	epochs/        partition u32 → epoch: the highest epoch promised (SaveEpochs)
//	fences/        node name → u64: the highest incarnation fenced (SaveFence)
//
// An epoch is v1 | N u64 | node. Each must be durable before the member sends anything
// after it: a node's protocol driver writes those of a batch of steps, with its
// watermarks, in one transaction (ProtocolBatch) before the batch's messages go.
var (
	keyIncarnation = []byte("incarnation")
	bucketHeld     = []byte("held")
	bucketEpochs   = []byte("epochs")
	bucketFences   = []byte("fences")
)

// ErrBackwards: SetIncarnation was asked for an incarnation below the stored one.
var ErrBackwards = errors.New("incarnation would go back")

func getIncarnation(pb *bolt.Bucket) (uint64, error) {
	v := pb.Get(keyIncarnation)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: incarnation of %d bytes, want 8", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Incarnation is the node's incarnation number: 0 until the first NextIncarnation.
func (s *Store) Incarnation() uint64 { return s.incarnation.Load() }

// NextIncarnation raises the incarnation by one, commits it and returns it. The node
// calls it once at every start, before it sends anything.
func (s *Store) NextIncarnation() (uint64, error) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	var n uint64
	err := s.update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketProtocol)
		cur, err := getIncarnation(pb)
		if err != nil {
			return err
		}
		n = cur + 1
		return pb.Put(keyIncarnation, binary.BigEndian.AppendUint64(nil, n))
	})
	if err != nil {
		return 0, s.wrap("next incarnation", err)
	}
	s.incarnation.Store(n)
	return n, nil
}

// SetIncarnation stores incarnation n (a Reincarnate effect). An incarnation never
// goes back: n below the stored one is refused with ErrBackwards; n equal to it
// changes nothing.
func (s *Store) SetIncarnation(n uint64) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	err := s.update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketProtocol)
		cur, err := getIncarnation(pb)
		if err != nil {
			return err
		}
		if n < cur {
			return fmt.Errorf("%w: %d is below the stored %d", ErrBackwards, n, cur)
		}
		if n == cur {
			return nil
		}
		return pb.Put(keyIncarnation, binary.BigEndian.AppendUint64(nil, n))
	})
	if err != nil {
		return s.wrap("set incarnation", err)
	}
	s.incarnation.Store(n)
	return nil
}

// Durable is what the store kept for protocol.NewMember: the partitions held with their
// epochs, the promised epochs and the fences. The caller, starting a new incarnation
// that holds nothing, clears the holdings with SetHeld once the member has them.
func (s *Store) Durable() (protocol.Durable, error) {
	d := protocol.Durable{Held: map[int]protocol.Epoch{}, Fences: map[string]uint64{}, Epochs: map[int]protocol.Epoch{}}
	err := s.view(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketProtocol)
		if err := readEpochs(pb.Bucket(bucketHeld), d.Held); err != nil {
			return fmt.Errorf("held: %w", err)
		}
		if err := readEpochs(pb.Bucket(bucketEpochs), d.Epochs); err != nil {
			return fmt.Errorf("epochs: %w", err)
		}
		if fb := pb.Bucket(bucketFences); fb != nil {
			return fb.ForEach(func(k, v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("%w: fence of %q: %d bytes, want 8", ErrCorrupt, k, len(v))
				}
				d.Fences[string(k)] = binary.BigEndian.Uint64(v)
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return protocol.Durable{}, s.wrap("read protocol state", err)
	}
	return d, nil
}

func partKey(p int) []byte { return binary.BigEndian.AppendUint32(make([]byte, 0, 4), uint32(p)) }

func encodeEpoch(e protocol.Epoch) []byte {
	b := make([]byte, 0, 1+8+len(e.Node))
	b = append(b, codecV1)
	b = binary.BigEndian.AppendUint64(b, e.N)
	return append(b, e.Node...)
}

func decodeEpoch(v []byte) (protocol.Epoch, error) {
	if len(v) < 9 || v[0] != codecV1 {
		return protocol.Epoch{}, fmt.Errorf("%w: epoch of %d bytes", ErrCorrupt, len(v))
	}
	return protocol.Epoch{N: binary.BigEndian.Uint64(v[1:]), Node: string(v[9:])}, nil
}

func readEpochs(b *bolt.Bucket, into map[int]protocol.Epoch) error {
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return fmt.Errorf("%w: partition key of %d bytes, want 4", ErrCorrupt, len(k))
		}
		p := int(binary.BigEndian.Uint32(k))
		e, err := decodeEpoch(v)
		if err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		into[p] = e
		return nil
	})
}

func validPartition(p int) error {
	if p < 0 || p > 1<<31-1 {
		return fmt.Errorf("partition %d: out of range", p)
	}
	return nil
}

func validEpoch(p int, e protocol.Epoch) error {
	if err := validPartition(p); err != nil {
		return err
	}
	if e.Node == "" {
		return fmt.Errorf("partition %d: epoch %d without a node", p, e.N)
	}
	return nil
}

// SetHeld records partitions now held, at their epochs (StartFiring), and partitions
// no longer held (StopFiring), in one transaction. A partition both added and removed
// is refused; removing one not held is not an error.
func (s *Store) SetHeld(add map[int]protocol.Epoch, remove []int) error {
	for _, p := range remove {
		if _, ok := add[p]; ok {
			return s.wrap("set held", fmt.Errorf("partition %d both added and removed", p))
		}
	}
	var b ProtocolBatch
	if err := b.SetHeld(add, remove); err != nil {
		return s.wrap("set held", err)
	}
	return s.commitProtocol("set held", &b)
}

// setHeldTx writes the held partitions of b. Caller holds s.pmu.
func setHeldTx(tx *bolt.Tx, held map[int]protocol.Epoch, released map[int]bool) error {
	if len(held) == 0 && len(released) == 0 {
		return nil
	}
	hb, err := tx.Bucket(bucketProtocol).CreateBucketIfNotExists(bucketHeld)
	if err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(released)) {
		if err := hb.Delete(partKey(p)); err != nil {
			return err
		}
	}
	for _, p := range slices.Sorted(maps.Keys(held)) {
		if err := hb.Put(partKey(p), encodeEpoch(held[p])); err != nil {
			return err
		}
	}
	return nil
}

// SaveEpochs records promised epochs (a SaveEpochs effect), keeping per partition the
// highest of the stored and the given one.
func (s *Store) SaveEpochs(epochs map[int]protocol.Epoch) error {
	var b ProtocolBatch
	if err := b.SaveEpochs(epochs); err != nil {
		return s.wrap("save epochs", err)
	}
	return s.commitProtocol("save epochs", &b)
}

// saveEpochsTx writes epochs where they are above the stored ones. Caller holds s.pmu.
func saveEpochsTx(tx *bolt.Tx, epochs map[int]protocol.Epoch) error {
	if len(epochs) == 0 {
		return nil
	}
	eb, err := tx.Bucket(bucketProtocol).CreateBucketIfNotExists(bucketEpochs)
	if err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(epochs)) {
		e, k := epochs[p], partKey(p)
		if v := eb.Get(k); v != nil {
			cur, err := decodeEpoch(v)
			if err != nil {
				return fmt.Errorf("partition %d: %w", p, err)
			}
			if !cur.Less(e) {
				continue
			}
		}
		if err := eb.Put(k, encodeEpoch(e)); err != nil {
			return err
		}
	}
	return nil
}

// SaveFence records that every incarnation of node up to upto is fenced (a Fence
// effect), keeping the highest.
func (s *Store) SaveFence(node string, upto uint64) error {
	var b ProtocolBatch
	if err := b.SaveFence(node, upto); err != nil {
		return s.wrap("save fence", err)
	}
	return s.commitProtocol("save fence", &b)
}

// saveFencesTx writes fences where they are above the stored ones. Caller holds s.pmu.
func saveFencesTx(tx *bolt.Tx, fences map[string]uint64) error {
	if len(fences) == 0 {
		return nil
	}
	fb, err := tx.Bucket(bucketProtocol).CreateBucketIfNotExists(bucketFences)
	if err != nil {
		return err
	}
	for _, node := range slices.Sorted(maps.Keys(fences)) {
		upto := fences[node]
		if v := fb.Get([]byte(node)); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: fence of %q: %d bytes, want 8", ErrCorrupt, node, len(v))
			}
			if binary.BigEndian.Uint64(v) >= upto {
				continue
			}
		}
		if err := fb.Put([]byte(node), binary.BigEndian.AppendUint64(nil, upto)); err != nil {
			return err
		}
	}
	return nil
}
