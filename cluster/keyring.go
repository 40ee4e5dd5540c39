package cluster

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultKeyringReload is how often the keyring file is read again.
const DefaultKeyringReload = 5 * time.Second

// maxKeyringKeys bounds the keys of a keyring file: a rotation needs two.
const maxKeyringKeys = 8

// readKeyring reads a keyring file: one base64 AES key (16, 24 or 32 bytes)
// a line, the first the primary (it encrypts what this node sends; every key
// decrypts); blank lines and lines starting with # are skipped. Errors never
// quote a key.
func readKeyring(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, err := decodeGossipKey(s)
		if err != nil {
			return nil, fmt.Errorf("%s, line %d: %w", path, line, err)
		}
		if slices.ContainsFunc(keys, func(o []byte) bool { return bytes.Equal(o, k) }) {
			return nil, fmt.Errorf("%s, line %d: the same key twice", path, line)
		}
		keys = append(keys, k)
	}
	switch {
	case sc.Err() != nil:
		return nil, fmt.Errorf("%s: %w", path, sc.Err())
	case len(keys) == 0:
		return nil, fmt.Errorf("%s: no key", path)
	case len(keys) > maxKeyringKeys:
		return nil, fmt.Errorf("%s: %d keys, at most %d", path, len(keys), maxKeyringKeys)
	}
	return keys, nil
}

// decodeGossipKey decodes one base64 AES key. The error never quotes it.
func decodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("not valid base64")
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("%d bytes, want 16, 24 or 32 (AES-128/192/256)", len(k))
}

// keyID names a key in logs without revealing it: the start of its SHA-256.
func keyID(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:4])
}

// watchKeyring reads the keyring file every KeyringReload and installs what
// changed: new keys first, then the primary, then removes the keys no longer
// listed. So a rotation is three edits of the file on every node (add the
// new key second; make it first; remove the old one), each rolled out before
// the next, with no restart and no moment two nodes cannot read each other.
func (c *Cluster) watchKeyring() { c.every(c.cfg.KeyringReload, c.reloadKeyring) }

func (c *Cluster) reloadKeyring() {
	ring := c.keyring
	want, err := readKeyring(c.cfg.GossipKeyringFile)
	if err != nil {
		c.met.keyringReloads.WithLabelValues("error").Inc()
		c.log.Error("gossip keyring file not applied; the keys in use stay", "err", err)
		return
	}
	have := ring.GetKeys()
	if slices.EqualFunc(want, have, bytes.Equal) {
		return // GetKeys lists the primary first, as the file does
	}
	if err := applyKeyring(ring, want, have); err != nil {
		c.met.keyringReloads.WithLabelValues("error").Inc()
		c.log.Error("gossip keyring not fully applied; the next read retries", "err", err)
		return
	}
	c.met.keyringReloads.WithLabelValues("ok").Inc()
	ids := make([]string, len(want))
	for i, k := range want {
		ids[i] = keyID(k)
	}
	c.log.Info("gossip keyring changed", "keys", ids, "primary", ids[0])
}

// applyKeyring makes ring hold want, want[0] the primary.
func applyKeyring(ring *memberlist.Keyring, want, have [][]byte) error {
	for _, k := range want {
		if err := ring.AddKey(k); err != nil { // a key already there is a no-op
			return fmt.Errorf("add key %s: %w", keyID(k), err)
		}
	}
	if err := ring.UseKey(want[0]); err != nil {
		return fmt.Errorf("use key %s: %w", keyID(want[0]), err)
	}
	for _, k := range have {
		if !slices.ContainsFunc(want, func(w []byte) bool { return bytes.Equal(w, k) }) {
			if err := ring.RemoveKey(k); err != nil {
				return fmt.Errorf("remove key %s: %w", keyID(k), err)
			}
		}
	}
	return nil
}
