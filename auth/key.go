package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// MinKeyLen is the shortest HMAC key accepted: 256 bits, as long as the
// HS256 hash itself.
const MinKeyLen = 32

// ErrShortKey is returned for an HMAC key shorter than MinKeyLen.
var ErrShortKey = errors.New("signing key too short")

// ErrKeyReadable: the key file lets its group or others read it.
var ErrKeyReadable = errors.New("signing key file is readable by others")

// LoadKey reads the HMAC signing key from path.
//
// The key is the file's bytes, less one trailing newline ("\n" or "\r\n"). It
// is not hex- or base64-decoded: Attune uses the bytes of its JWT_SECRET string
// as the key, so the same text in both places gives the same key. It must be at
// least MinKeyLen bytes. A file readable by others is accepted with a warning
// on logger (nil: no warning).
func LoadKey(path string, logger *slog.Logger) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key %q: %w", path, err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if len(b) < MinKeyLen {
		return nil, fmt.Errorf("load key %q: %w: %d bytes, need at least %d", path, ErrShortKey, len(b), MinKeyLen)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o044 != 0 {
		// Whoever reads the key can sign any token.
		return nil, fmt.Errorf("load key %q: %w: mode %s lets its group or others read it; chmod 600 it", path, ErrKeyReadable, fi.Mode().Perm())
	}
	return b, nil
}

// GenerateKeyFile writes a new key to path with mode 0600: 32 random bytes
// as 64 hex characters and a newline, so it can also be pasted into Attune's
// JWT_SECRET. It refuses to overwrite an existing file.
func GenerateKeyFile(path string) error {
	raw := make([]byte, MinKeyLen)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("generate key %q: %w", path, err)
	}
	_, werr := f.WriteString(hex.EncodeToString(raw) + "\n")
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return fmt.Errorf("generate key %q: %w", path, werr)
	}
	return nil
}
