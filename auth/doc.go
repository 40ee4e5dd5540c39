// Package auth owns timerd's tokens: the JWT claims and scopes of Attune's
// service accounts (contract §5), issuing and verifying HS256 tokens on the
// API side, and the client-side Source every node uses to hand out its bearer
// token and refresh it at 80 % of its lifetime.
//
// Storage of identities and revocations is the API server's business; this
// package only defines the Revocation record and the Verifier.Revoked hook.
// No function here ever puts a token into an error or a log line; use Mask to
// refer to one.
package auth
