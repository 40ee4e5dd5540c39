package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzDecode: Decode never panics; what it refuses is an ErrWire with a reason; what it
// accepts Encode writes again, and that decodes to the same message and encodes to the
// same bytes.
//
//	go test ./cluster/protocol -run '^$' -fuzz FuzzDecode -fuzztime 60s
func FuzzDecode(f *testing.F) {
	for _, tc := range wireCases() {
		b, err := Encode(tc.msg)
		if err != nil {
			f.Fatalf("Encode(%s): %v", tc.name, err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{WireVersion + 1, kindRetired, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte(wireHeader(kindFired).u64(1).uvarint(1 << 40)))
	f.Add([]byte(wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(0).uvarint(0).uvarint(0).uvarint(1).
		u64(1).u64(2).u64(3).uvarint(ChainLen + 1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if m != nil || !errors.Is(err, ErrWire) || WireReason(err) == "" {
				t.Fatalf("Decode(%x) = %#v, %v: want nil and an ErrWire with a reason", b, m, err)
			}
			return
		}
		b2, err := Encode(m)
		if err != nil {
			t.Fatalf("Decode(%x) = %#v, which Encode refuses: %v", b, m, err)
		}
		m2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(Encode(%#v)) = %v", m, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("Decode(%x) = %#v, but after Encode and Decode %#v", b, m, m2)
		}
		if b3, err := Encode(m2); err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("Encode(%#v) = %x, then %x, %v", m, b2, b3, err)
		}
	})
}
