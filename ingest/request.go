package ingest

import "sync/atomic"

// bearerHeader is the Authorization value of one token.
type bearerHeader struct {
	token string
	value string
}

// bearerCache keeps the Authorization value of the last token a Delivery posted
// with: a token (a JWT of half a kilobyte) is the same for hours, and was
// concatenated into a new string for every POST.
type bearerCache struct{ last atomic.Pointer[bearerHeader] }

// header returns the Authorization header value of tok, "Bearer <tok>", or ""
// for no token.
func (c *bearerCache) header(tok string) string {
	if tok == "" {
		return ""
	}
	if b := c.last.Load(); b != nil && b.token == tok {
		return b.value
	}
	b := &bearerHeader{token: tok, value: "Bearer " + tok}
	c.last.Store(b)
	return b.value
}
