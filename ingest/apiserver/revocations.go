package apiserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/auth"
)

// revocations is the in-memory copy of the revocations bucket, so that the
// check on every request takes a read lock and no transaction.
type revocations struct {
	mu     sync.RWMutex
	jtis   map[string]time.Time // jti → token exp
	idents map[string]time.Time // identity id → latest exp of its tokens
}

// revocationKey is "j/<jti>" for a token, "i/<identity id>" for every token
// of an identity.
func revocationKey(rev auth.Revocation) []byte {
	if rev.JTI != "" {
		return []byte("j/" + rev.JTI)
	}
	return []byte("i/" + string(rev.IdentityID))
}

func loadRevocations(db *bolt.DB) (*revocations, error) {
	rs := &revocations{jtis: map[string]time.Time{}, idents: map[string]time.Time{}}
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevoked).ForEach(func(k, v []byte) error {
			var rev auth.Revocation
			if err := json.Unmarshal(v, &rev); err != nil {
				return fmt.Errorf("revocation %q: %w", k, err)
			}
			rs.add(rev)
			return nil
		})
	})
	return rs, err
}

// add records rev in memory. The caller has committed it.
func (rs *revocations) add(rev auth.Revocation) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rev.JTI != "" {
		rs.jtis[rev.JTI] = rev.TokenExp
	} else if rev.IdentityID != "" {
		rs.idents[string(rev.IdentityID)] = rev.TokenExp
	}
}

// revoked is the Verifier.Revoked hook. Empty ids never match.
func (rs *revocations) revoked(jti, identityID string) (bool, error) {
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	if _, ok := rs.jtis[jti]; ok && jti != "" {
		return true, nil
	}
	_, ok := rs.idents[identityID]
	return ok && identityID != "", nil
}

func (rs *revocations) len() int {
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	return len(rs.jtis) + len(rs.idents)
}

// putRevocations stores recs in tx; the caller adds them to memory after
// the commit.
func putRevocations(tx *bolt.Tx, recs []auth.Revocation) error {
	b := tx.Bucket(bucketRevoked)
	for _, rev := range recs {
		v, err := json.Marshal(rev)
		if err != nil {
			return err
		}
		if err := b.Put(revocationKey(rev), v); err != nil {
			return err
		}
	}
	return nil
}

// cleanupRevocations deletes the records no token they cover can pass
// verification at now any more (token_exp plus the verifier's leeway), and
// returns how many it deleted.
func (s *Server) cleanupRevocations(now time.Time) (int, error) {
	s.acctMu.Lock() // no revocation is written meanwhile
	defer s.acctMu.Unlock()
	leeway := s.verifier.Leeway
	if leeway == 0 {
		leeway = auth.DefaultLeeway
	}
	var gone []auth.Revocation
	err := s.db.Update(func(tx *bolt.Tx) error {
		gone = gone[:0]
		b := tx.Bucket(bucketRevoked)
		var keys [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rev auth.Revocation
			if err := json.Unmarshal(v, &rev); err != nil {
				return fmt.Errorf("revocation %q: %w", k, err)
			}
			if rev.Expired(now, leeway) {
				keys = append(keys, k)
				gone = append(gone, rev)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys { // not while iterating: a cursor skips after a delete
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("clean up revocations: %w", err)
	}
	if len(gone) == 0 {
		return 0, nil
	}
	s.revs.mu.Lock()
	for _, rev := range gone {
		if rev.JTI != "" {
			delete(s.revs.jtis, rev.JTI)
		} else {
			delete(s.revs.idents, string(rev.IdentityID))
		}
	}
	s.revs.mu.Unlock()
	s.log.Info("deleted revocations of expired tokens", "deleted", len(gone), "left", s.revs.len())
	return len(gone), nil
}

// runRevocationCleanup runs cleanupRevocations every
// RevocationCleanupInterval until Close.
func (s *Server) runRevocationCleanup() {
	defer s.committer.Done()
	t := time.NewTicker(s.cfg.RevocationCleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if _, err := s.cleanupRevocations(s.cfg.Now()); err != nil {
				s.log.Error("revocation cleanup failed; the next run retries", "err", err)
			}
		}
	}
}

// revokeToken is POST /auth/revoke, body {"jti"} or {"identity_id"}, and an
// optional "reason". Any token may revoke itself ({} or its own jti); an
// admin may revoke any one token by jti, or every token of an identity. A
// record is kept until the tokens it covers expire: the caller's own exp,
// the account's latest token, else MaxTTL (a jti's exp is not known here).
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	caller, body, ok := s.callerAndBody(w, r)
	if !ok {
		return
	}
	var jti, identity, reason string
	if len(bytes.TrimSpace(body)) > 0 {
		f, err := decodeObject(body)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		for _, p := range []struct {
			name string
			v    *string
			max  int
		}{{"jti", &jti, maxRefLen}, {"identity_id", &identity, maxRefLen}, {"reason", &reason, maxDescriptionLen}} {
			if *p.v, _, err = f.str(p.name); err == nil {
				err = checkText(p.name, *p.v, p.max)
			}
			if err != nil {
				s.fail(w, r, err)
				return
			}
		}
	}
	now := s.cfg.Now().UTC()
	rev := auth.Revocation{RevokedAt: now, RevokedBy: caller.Subject, Reason: reason}
	switch {
	case jti != "" && identity != "":
		s.fail(w, r, errorf(http.StatusBadRequest, "jti, identity_id: give one, not both"))
		return
	case (jti == "" && identity == "") || jti == caller.ID:
		rev.JTI, rev.TokenExp = caller.ID, caller.ExpiresAtTime().UTC() // itself
	case caller.Scope != auth.ScopeAdmin:
		s.fail(w, r, errorf(http.StatusForbidden, "%v: only an admin token may revoke another token or an identity", auth.ErrScope))
		return
	case jti != "":
		rev.JTI, rev.TokenExp = jti, now.Add(auth.MaxTTL)
	default:
		rev.IdentityID, rev.TokenExp = auth.IdentityID(identity), now.Add(auth.MaxTTL)
		if a, found, err := s.accountOf(rev.IdentityID); err == nil && found {
			rev.TokenExp = a.TokensExpireAt
		}
	}
	if rev.JTI == "" && rev.IdentityID == "" {
		s.fail(w, r, errorf(http.StatusBadRequest, "the token has no jti: nothing to revoke it by"))
		return
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return putRevocations(tx, []auth.Revocation{rev}) }); err != nil {
		s.fail(w, r, err)
		return
	}
	s.revs.add(rev)
	s.log.Info("token revoked", "jti", rev.JTI, "identity_id", rev.IdentityID, "by", caller.Subject,
		"reason", reason, "kept_until", rev.TokenExp)
	writeJSON(w, http.StatusOK, map[string]any{"data": rev})
}
