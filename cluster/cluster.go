package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/backoff"
)

// Errors of the Cluster lifecycle.
var (
	ErrJoinCalled = errors.New("cluster: Join already called")
	ErrShutdown   = errors.New("cluster: shut down")
)

// Errors of New that name the setting at fault: errors.Is tells them apart.
var (
	// ErrBind: the gossip port (Config.BindAddr) could not be bound.
	ErrBind = errors.New("cluster: gossip port not bound")
	// ErrAdvertise: gossip found no address to advertise to its peers
	// (Config.AdvertiseAddr, or none and no private IP to take instead).
	ErrAdvertise = errors.New("cluster: no address to advertise")
)

// startError is memberlist's failure to start, which Is ErrBind or ErrAdvertise
// (or neither) and reads as memberlist's own message.
type startError struct {
	kind error // ErrBind, ErrAdvertise or nil
	err  error
}

func (e *startError) Error() string        { return e.err.Error() }
func (e *startError) Unwrap() error        { return e.err }
func (e *startError) Is(target error) bool { return e.kind != nil && target == e.kind }

// startFailure classifies memberlist.Create's error. memberlist formats its causes
// with %v, so its wording is the only thing to tell them by: it is read here, next
// to the call, and TestNewErrorNamesTheSetting pins it for the memberlist in go.mod.
func startFailure(err error) *startError {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "advertise address"): // "failed to get final advertise address: ..."
		return &startError{kind: ErrAdvertise, err: err}
	case strings.Contains(msg, "network transport"): // "could not set up network transport: ..."
		return &startError{kind: ErrBind, err: err}
	}
	return &startError{err: err}
}

// Member is one node as this node sees it.
type Member struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`  // host:port of its gossip
	State string `json:"state"` // StateAlive, StateSuspect, StateDead or StateLeft
	Self  bool   `json:"self,omitempty"`
	// HTTPAddr is host:port of its HTTP endpoints, as its node meta tells; "" if unknown.
	HTTPAddr string `json:"http_addr,omitempty"`
}

// JoinResult says how Join decided.
type JoinResult struct {
	Contacted int  // peers reached by the join (0 when alone)
	Alone     bool // no peer: Config.Join empty, or none reachable within JoinTimeout
	TimedOut  bool // alone because JoinTimeout passed with no reachable peer
}

// Cluster is one node's membership, ring and the transport of the protocol's messages.
type Cluster struct {
	cfg      Config
	bindPort int // the bound gossip port: the port of a Join entry that has none
	log      *slog.Logger
	ml       *memberlist.Memberlist
	keyring  *memberlist.Keyring              // nil: plain gossip
	queue    *memberlist.TransmitLimitedQueue // leave intents
	met      *metrics

	mu      sync.Mutex // guards members and leaving
	members map[string]*memberState
	leaving map[string]time.Time // peers that announced they leave
	alive   atomic.Int32

	viewMu     sync.Mutex // serialises building and publishing views, guards mostSeen
	view       atomic.Pointer[View]
	mostSeen   int  // the most members of one view so far
	warnedNoQ  bool // the warning that Expect 1 requires no quorum was logged
	joinCtx    context.Context
	cancelJoin context.CancelFunc // ends lookups of the join list at Shutdown

	joinCalled  atomic.Bool
	lastJoinErr atomic.Pointer[error]
	decided     atomic.Bool

	kick chan struct{}

	tr      transport          // protocol messages (transport.go)
	counted *countingTransport // the gossip sockets' bytes (netbytes.go); nil with Config.Memberlist's own transport

	meta []byte // this node's memberlist meta (meta.go)

	life    sync.Mutex // guards stopped and wg.Add
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error
}

type memberState struct {
	addr  string
	http  string // its HTTP endpoints' host:port (meta.go), "" if unknown
	state string
	since time.Time
	node  memberlist.Node // a copy, for sending to it
}

// Dead and left members stay listed this long (and at most deadKept of them).
const (
	deadRetention  = time.Hour
	deadKept       = 256
	leaveIntentTTL = time.Minute
	maxNameLen     = 512
)

// New validates cfg, binds the gossip port and starts memberlist. The node is alone and owns
// nothing until Join decides. A failure to start gossip Is ErrBind or ErrAdvertise when it
// is the fault of that setting.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Cluster{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "cluster", "node", cfg.NodeName),
		members: map[string]*memberState{},
		leaving: map[string]time.Time{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		meta:    encodeMeta(cfg.HTTPAddr),
	}
	c.view.Store(&View{Self: cfg.NodeName, Expect: cfg.Expect})
	c.joinCtx, c.cancelJoin = context.WithCancel(context.Background())
	c.met = newMetrics()
	c.queue = &memberlist.TransmitLimitedQueue{
		NumNodes: func() int { return int(c.alive.Load()) },
	}
	mc, err := cfg.memberlistConfig(&delegate{c})
	if err != nil {
		return nil, err
	}
	c.queue.RetransmitMult = mc.RetransmitMult
	c.tr.init(mc.UDPBufferSize, cfg.MessageBuffer)
	if mc.Transport == nil {
		if c.counted, err = countingNetTransport(mc); err != nil {
			return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, startFailure(err))
		}
		mc.Transport = c.counted
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		if c.counted != nil {
			_ = c.counted.Shutdown()
		}
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, startFailure(err))
	}
	c.ml, c.bindPort = ml, mc.BindPort // memberlist wrote the bound port back
	c.keyring = mc.Keyring             // memberlist made one of SecretKey; nil: plain gossip
	if err := c.met.register(cfg.Registerer, c); err != nil {
		_ = ml.Shutdown()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.goTracked(c.worker)
	if cfg.GossipKeyringFile != "" {
		c.goTracked(c.watchKeyring)
	}
	return c, nil
}

// Name is this node's name.
func (c *Cluster) Name() string { return c.cfg.NodeName }

// LocalAddr is host:port that peers reach this node's gossip at (with the bound port when
// BindAddr asked for port 0).
func (c *Cluster) LocalAddr() string {
	n := c.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// goTracked runs f in a goroutine that Shutdown waits for; false once shut down.
func (c *Cluster) goTracked(f func()) bool {
	c.life.Lock()
	defer c.life.Unlock()
	if c.stopped {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// Join retries its peers with jittered backoff (ingest/backoff) between these.
const (
	joinRetryMin = 100 * time.Millisecond
	joinRetryMax = 2 * time.Second
)

// Join joins the peers of Config.Join, retrying until JoinTimeout, and then publishes the
// first View: of itself and the peers it reached or, alone (no peers configured, or none
// reachable before JoinTimeout, logged as a warning), of itself, a quorum only if Expect is
// 1. From then on the node goes on joining in the background (rejoin) for as long as it sees
// fewer members than it should. Join is called once; ctx ends the wait without a decision.
func (c *Cluster) Join(ctx context.Context) (JoinResult, error) {
	if !c.joinCalled.CompareAndSwap(false, true) {
		return JoinResult{}, ErrJoinCalled
	}
	if len(c.cfg.Join) == 0 {
		c.decide()
		if v := c.view.Load(); !v.Quorum {
			c.log.Warn("no peers configured (TIMERD_JOIN): this node fires nothing until peers join it and make a quorum",
				"expect", v.Expect, "quorum", v.QuorumSize())
		} else {
			c.log.Info("no peers configured: running alone")
		}
		return JoinResult{Alone: true}, nil
	}
	start := time.Now()
	timeout := time.NewTimer(c.cfg.JoinTimeout)
	defer timeout.Stop()
	for attempt := 1; ; attempt++ {
		res := c.attempt()
		if res == nil {
			return JoinResult{}, ErrShutdown
		}
		select {
		case n := <-res:
			if n > 0 {
				c.decide()
				v := c.view.Load()
				c.log.Info("joined the cluster", "contacted", n, "members", c.alive.Load(), "took", time.Since(start),
					"expect", v.Expect, "quorum", v.Quorum)
				c.startRejoin(nil)
				return JoinResult{Contacted: n}, nil
			}
			// Jittered, so that nodes started together do not knock together.
			wait := time.NewTimer(backoff.Delay(attempt, joinRetryMin, joinRetryMax))
			select {
			case <-wait.C:
				continue
			case <-timeout.C:
				res = nil
			case <-ctx.Done():
				wait.Stop()
				return JoinResult{}, ctx.Err()
			case <-c.stop:
				wait.Stop()
				return JoinResult{}, ErrShutdown
			}
		case <-timeout.C:
		case <-ctx.Done():
			return JoinResult{}, ctx.Err()
		case <-c.stop:
			return JoinResult{}, ErrShutdown
		}
		c.decide()
		var lastErr error
		if p := c.lastJoinErr.Load(); p != nil {
			lastErr = *p
		}
		if v := c.view.Load(); !v.Quorum {
			c.log.Warn("NO PEER REACHABLE after the join timeout: this node fires nothing and waits for a quorum; it keeps trying to join",
				"join", c.cfg.Join, "expect", v.Expect, "quorum", v.QuorumSize(), "join_timeout", c.cfg.JoinTimeout,
				"rejoin_interval", c.cfg.RejoinInterval, "last_error", lastErr)
		} else {
			c.log.Warn("NO PEER REACHABLE: running ALONE after the join timeout; this node owns every rule until a peer joins",
				"join", c.cfg.Join, "join_timeout", c.cfg.JoinTimeout, "rejoin_interval", c.cfg.RejoinInterval, "last_error", lastErr)
		}
		c.startRejoin(res)
		return JoinResult{Alone: true, TimedOut: true}, nil
	}
}

// attempt runs one join in the background (it may block for memberlist's TCPTimeout per
// address) and delivers the number of peers contacted; nil once shut down.
func (c *Cluster) attempt() <-chan int {
	res := make(chan int, 1)
	if !c.goTracked(func() {
		n, err := c.joinPeers()
		if n == 0 {
			c.lastJoinErr.Store(&err)
			c.log.Debug("join attempt failed", "join", c.cfg.Join, "err", err)
		}
		res <- n
	}) {
		return nil
	}
	return res
}

// errOnlySelf: the join list holds this node's own address (a static list of every node, or a
// headless service that resolves to this pod alone) and no other node answered.
var errOnlySelf = errors.New("only this node answered")

// joinPeers resolves Config.Join, joins every address and reports how many nodes answered: 0
// when only this node did, which memberlist counts as a successful join. Counting it would
// make a node that reaches nobody but itself skip the join timeout: a split cluster.
func (c *Cluster) joinPeers() (int, error) {
	addrs, err := c.resolveJoin()
	if len(addrs) == 0 {
		return 0, err
	}
	n, jerr := c.ml.Join(addrs)
	if n > 0 && c.ml.NumMembers() < 2 {
		return 0, errors.Join(errOnlySelf, err, jerr)
	}
	if n > 0 {
		return n, nil
	}
	return 0, errors.Join(err, jerr)
}

// resolveTimeout bounds one lookup of the join list.
const resolveTimeout = 5 * time.Second

// resolveJoin is Config.Join as host:port addresses, in the form of Member.Addr: an IP entry
// as it is, a host name looked up again (Config.Resolve) at every call, so that a DNS name
// follows the nodes it names. An entry without a port takes the bind port. The addresses of
// the names that resolved come with the error of those that did not.
func (c *Cluster) resolveJoin() ([]string, error) {
	ctx, cancel := context.WithTimeout(c.joinCtx, resolveTimeout)
	defer cancel()
	var (
		out  []string
		errs []error
	)
	add := func(a string) {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, entry := range c.cfg.Join {
		host, port, _ := splitHostPort(entry, true) // valid: Validate
		if port < 0 {
			port = c.bindPort
		}
		if a, err := hostPort(host, port); err == nil {
			add(a)
			continue
		}
		hosts, err := c.cfg.Resolve(ctx, host)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve %s: %w", host, err))
			continue
		}
		if len(hosts) == 0 {
			errs = append(errs, fmt.Errorf("resolve %s: no address", host))
		}
		for _, h := range hosts {
			a, err := hostPort(h, port)
			if err != nil {
				errs = append(errs, fmt.Errorf("resolve %s: %w", host, err))
				continue
			}
			add(a)
		}
	}
	return out, errors.Join(errs...)
}

// hostPort is ip, or ip:port (whose port wins over port), as memberlist writes a node's address.
func hostPort(s string, port int) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.JoinHostPort(ap.Addr().Unmap().String(), strconv.Itoa(int(ap.Port()))), nil
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return "", fmt.Errorf("%q is not an IP address", s)
	}
	return net.JoinHostPort(ip.Unmap().String(), strconv.Itoa(port)), nil
}

// startRejoin runs rejoin in the background when there is a join list and RejoinInterval is
// positive.
func (c *Cluster) startRejoin(inflight <-chan int) {
	if len(c.cfg.Join) > 0 && c.cfg.RejoinInterval > 0 {
		c.goTracked(func() { c.rejoin(inflight) })
	}
}

// rejoin runs from Join's decision to Shutdown: every RejoinInterval it joins again while the
// node sees fewer members than it should (rejoinOnce). It never stops for good: nodes started
// together, each alone at first, and the two sides of a healed partition merge (a join is a
// push/pull exchange: each side learns every member of the other). inflight is the join
// attempt still running when Join timed out (nil if none).
func (c *Cluster) rejoin(inflight <-chan int) {
	if inflight != nil {
		select {
		case n := <-inflight:
			if n > 0 {
				c.log.Warn("joined peers after deciding to run alone", "contacted", n)
			}
		case <-c.stop:
			return
		}
	}
	c.every(c.cfg.RejoinInterval, c.rejoinOnce)
}

// every runs f every d until Shutdown.
func (c *Cluster) every(d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			f()
		}
	}
}

// rejoinOnce resolves the join list again and, when the node sees fewer members than the
// larger of Expect and the list's addresses (itself counted once), joins the listed addresses
// that are no member's. A node without a quorum says, every time, that it waits for one.
func (c *Cluster) rejoinOnce() {
	addrs, err := c.resolveJoin()
	self := c.LocalAddr()
	known := map[string]bool{self: true}
	c.mu.Lock()
	for _, m := range c.members {
		if m.state == StateAlive {
			known[m.addr] = true
		}
	}
	c.mu.Unlock()
	others, missing := 0, []string(nil)
	for _, a := range addrs {
		if a == self {
			continue
		}
		others++
		if !known[a] {
			missing = append(missing, a)
		}
	}
	want := max(c.cfg.Expect, others+1)
	if int(c.alive.Load()) >= want {
		return
	}
	if len(missing) > 0 {
		n, jerr := c.ml.Join(missing)
		if n > 0 {
			c.log.Info("joined peers in the background", "contacted", n, "members", c.alive.Load(), "want", want)
			return
		}
		err = errors.Join(err, jerr)
	}
	if v := c.view.Load(); !v.Quorum {
		c.log.Warn("waiting for a quorum: this node fires nothing", "members", len(v.Members), "quorum", v.QuorumSize(),
			"expect", v.Expect, "join", c.cfg.Join, "resolved", addrs, "err", err)
		return
	}
	c.log.Debug("fewer members than the join list names; joining again in the background", "members", c.alive.Load(),
		"want", want, "resolved", addrs, "err", err)
}

// decide publishes the first view: Join has decided (joined, or alone).
func (c *Cluster) decide() {
	c.decided.Store(true)
	c.rebuild(true)
}

// worker rebuilds the ring after membership events, off memberlist's goroutines.
func (c *Cluster) worker() {
	for {
		select {
		case <-c.stop:
			return
		case <-c.kick:
			c.rebuild(false)
		}
	}
}

func (c *Cluster) kickWorker() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// rebuild publishes a new view when the ring's member set changed (always the first view).
func (c *Cluster) rebuild(first bool) {
	c.viewMu.Lock()
	defer c.viewMu.Unlock()
	if !c.decided.Load() {
		return
	}
	names := c.ringMembers()
	cur := c.view.Load()
	if !first && (cur.Version == 0 || slices.Equal(cur.Members, names)) {
		return
	}
	ring, err := NewRing(c.cfg.Ring, names)
	if err != nil {
		c.log.Error("ring change not applied: keeping the previous view", "members", len(names), "err", err)
		return
	}
	v := &View{Version: cur.Version + 1, Self: c.cfg.NodeName, Members: names, ring: ring}
	c.quorum(v, cur)
	if !first {
		c.met.ringChanges.Inc()
	}
	c.view.Store(v)
	c.log.Info("ring view", "version", v.Version, "members", names, "quorum", v.Quorum, "expect", v.Expect)
	switch {
	case v.Quorum && !cur.Quorum && c.cfg.Expect > 1:
		c.log.Info("quorum reached: this node fires its share of the rules", "members", len(names), "quorum", v.QuorumSize(), "expect", v.Expect)
	case !v.Quorum && cur.Quorum:
		c.log.Warn("QUORUM LOST: this node fires nothing until it sees a quorum of the expected members again",
			"members", len(names), "quorum", v.QuorumSize(), "expect", v.Expect)
	}
}

// quorum sets v.Expect and v.Quorum from v.Members, cur being the previous view. N is the
// larger of Config.Expect and the most members this node has seen in one view, less those that
// left gracefully since (a scale-in, a rolling restart; they count again when back). A member
// that died or that this node lost contact with still counts: each side of a partition keeps
// the N of the whole, and at most one side holds more than half of it. viewMu is held.
func (c *Cluster) quorum(v, cur *View) {
	seen := len(v.Members)
	if c.cfg.Expect == 1 {
		v.Expect, v.Quorum = 1, true
		if seen > 1 && !c.warnedNoQ {
			c.warnedNoQ = true
			c.log.Warn("TIMERD_EXPECT is 1: no quorum is required, so every side of a network partition fires every rule; "+
				"set it to the number of nodes", "members", seen)
		}
		return
	}
	if seen > c.cfg.Expect {
		c.log.Warn("this node sees more members than TIMERD_EXPECT: it counts a quorum of the larger number; "+
			"set TIMERD_EXPECT to the number of nodes", "members", seen, "expect", c.cfg.Expect)
	}
	left := 0
	c.mu.Lock()
	for _, name := range cur.Members {
		if m, ok := c.members[name]; ok && m.state == StateLeft && !slices.Contains(v.Members, name) {
			left++
		}
	}
	c.mu.Unlock()
	c.mostSeen = max(c.mostSeen-left, seen)
	v.Expect = max(c.cfg.Expect, c.mostSeen)
	v.Quorum = seen >= v.QuorumSize()
}

// ringMembers is the sorted names of live (alive or suspect) members, always with self.
func (c *Cluster) ringMembers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := []string{c.cfg.NodeName}
	for name, m := range c.members {
		if name != c.cfg.NodeName && m.state == StateAlive {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// View is the current view.
func (c *Cluster) View() View { return c.view.Load().clone() }

// Owner is the node owning ruleID in the current view ("" before Join decided).
func (c *Cluster) Owner(ruleID int64) string { return c.view.Load().ring.Owner(ruleID) }

// Owns reports whether this node owns ruleID in the current view (false before Join decided).
func (c *Cluster) Owns(ruleID int64) bool { return c.view.Load().Owns(ruleID) }

// Members lists the nodes this node knows, sorted by name, dead and left ones included for
// a while. State is never StateSuspect: memberlist v0.7.0 does not expose suspicion (its
// Node.State is never set and no event reports it); a suspect stays alive, and in the ring,
// until it is declared dead.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	out := make([]Member, 0, len(c.members))
	for name, m := range c.members {
		out = append(out, Member{Name: name, Addr: m.addr, HTTPAddr: m.http, State: m.state, Self: name == c.cfg.NodeName})
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Leave tells the peers that this node leaves and shuts down, within ctx's deadline or
// LeaveTimeout (the earlier): it tells every live peer that it is leaving, by gossip and over
// TCP (≤ 1/2 of the time), so that they list it as left, not dead; then it leaves memberlist
// (peers drop it from the ring at once) and shuts down. Hand over what the node holds before
// calling it. Idempotent; nil after Shutdown.
func (c *Cluster) Leave(ctx context.Context) error {
	c.life.Lock()
	stopped := c.stopped
	c.life.Unlock()
	if stopped {
		return nil
	}
	deadline := time.Now().Add(c.cfg.LeaveTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	step := time.Until(deadline) / 2
	c.mu.Lock()
	c.leaving[c.cfg.NodeName] = time.Now() // so that its own leave logs as left
	c.mu.Unlock()
	peers := c.alive.Load() - 1
	if peers > 0 {
		// Gossip is best effort: the intent goes to every peer over TCP too.
		intent := append([]byte{leaveVersion, leaveKind}, c.cfg.NodeName...)
		c.queue.QueueBroadcast(&broadcast{name: "leave/" + c.cfg.NodeName, msg: intent})
		c.tellLeaving(ctx, intent, step)
	}
	var err error
	if left := time.Until(deadline); left > 0 && ctx.Err() == nil {
		if lerr := c.ml.Leave(left); lerr != nil {
			err = fmt.Errorf("leave cluster: %w", lerr)
		}
	}
	c.log.Info("left the cluster", "peers", peers)
	return errors.Join(err, c.Shutdown())
}

// tellLeaving sends every live peer the leave intent over TCP, waiting at most d; the sends
// go on in the background if slow.
func (c *Cluster) tellLeaving(ctx context.Context, intent []byte, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	peers, reached, err := c.eachPeer(ctx, func(n *memberlist.Node) error {
		return c.ml.SendReliable(n, intent)
	})
	if reached < peers {
		c.log.Warn("leaving before every peer was told", "peers", peers, "reached", reached, "err", err)
	}
}

// eachPeer runs f for every live peer at once and waits for them all or for ctx; the calls
// still running then finish in the background (memberlist bounds them by its TCPTimeout).
func (c *Cluster) eachPeer(ctx context.Context, f func(*memberlist.Node) error) (peers, reached int, err error) {
	members := c.ml.Members()
	results := make(chan error, len(members)) // never blocks a call that ends late
	for _, n := range members {
		if n.Name == c.cfg.NodeName {
			continue
		}
		if !c.goTracked(func() {
			if err := f(n); err != nil {
				results <- fmt.Errorf("peer %s at %s: %w", n.Name, n.Address(), err)
				return
			}
			results <- nil
		}) {
			return peers, 0, ErrShutdown
		}
		peers++
	}
	var errs []error
	for range peers {
		select {
		case err := <-results:
			if err != nil {
				errs = append(errs, err)
				continue
			}
			reached++
		case <-ctx.Done():
			return peers, reached, errors.Join(append(errs, ctx.Err())...)
		case <-c.stop:
			return peers, reached, ErrShutdown
		}
	}
	return peers, reached, errors.Join(errs...)
}

// Shutdown stops gossip without telling peers (they will find this node dead); use Leave
// for a graceful exit. It may wait for an in-flight join attempt (memberlist's TCPTimeout).
// Idempotent.
func (c *Cluster) Shutdown() error {
	c.shutdownOnce.Do(func() {
		c.life.Lock()
		c.stopped = true
		close(c.stop)
		c.life.Unlock()
		c.cancelJoin()
		if err := c.ml.Shutdown(); err != nil {
			c.shutdownErr = fmt.Errorf("shut down gossip: %w", err)
		}
		c.wg.Wait()
		c.stopSenders()
	})
	return c.shutdownErr
}

// The leave intent, [leaveVersion][leaveKind][node name], is the one packet besides the
// protocol's: a node that leaves sends it by gossip and over TCP, so that its peers list
// it as left, not dead (and count a quorum without it). Its bytes are those of earlier
// builds.
const (
	leaveVersion = 1
	leaveKind    = 3
	leaveHeader  = 2
)

// broadcast is a leave intent for memberlist's gossip queue; a newer one of the same node
// replaces it (named broadcast).
type broadcast struct {
	name string
	msg  []byte
}

func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	nb, ok := other.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// delegate receives memberlist's callbacks. It never blocks and never calls back into
// memberlist (its events arrive under memberlist's node lock).
type delegate struct{ c *Cluster }

// NotifyMsg takes a protocol packet (transport.go) or a leave intent; any other packet is
// dropped and counted as the protocol's (in, version; in, malformed when shorter than a
// header): the watermark packets of an older build, whose gossip this node no longer runs,
// are such.
func (d *delegate) NotifyMsg(b []byte) {
	switch {
	case len(b) > 0 && b[0] == protocolPrefix:
		d.protocolMsg(b[1:])
	case len(b) >= leaveHeader && b[0] == leaveVersion && b[1] == leaveKind:
		d.leaving(b)
	case len(b) < leaveHeader:
		d.c.dropIn(protocol.WireMalformed, fmt.Sprintf("a packet of %d bytes", len(b)))
	default:
		d.c.dropIn(protocol.WireUnknownVersion, fmt.Sprintf("a packet of version %d, kind %d", b[0], b[1]))
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

// LocalState and MergeRemoteState exchange no state of this node's own: memberlist's
// push/pull carries the membership alone.
func (d *delegate) LocalState(bool) []byte { return nil }

func (d *delegate) MergeRemoteState([]byte, bool) {}

func (d *delegate) NotifyJoin(n *memberlist.Node) { d.set(n, StateAlive) }

func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.set(n, StateAlive) }

// NotifyLeave is told of both dead and left nodes (memberlist v0.7.0 passes a Node whose
// State is never set): a node that announced it was leaving is left, any other dead.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	state := StateDead
	d.c.mu.Lock()
	if t, ok := d.c.leaving[n.Name]; ok && time.Since(t) < leaveIntentTTL {
		state = StateLeft
	}
	d.c.mu.Unlock()
	d.set(n, state)
}

// leaving records a peer's intent to leave (it may arrive after memberlist's leave).
func (d *delegate) leaving(b []byte) {
	c := d.c
	name := string(b[leaveHeader:])
	if name == "" || len(name) > maxNameLen {
		c.dropIn(protocol.WireInvalid, fmt.Sprintf("a leave intent with a name of %d bytes", len(name)))
		return
	}
	now := time.Now()
	c.mu.Lock()
	_, seen := c.leaving[name]
	c.leaving[name] = now
	for n, t := range c.leaving {
		if now.Sub(t) > leaveIntentTTL {
			delete(c.leaving, n)
		}
	}
	if m, ok := c.members[name]; ok && m.state == StateDead {
		m.state = StateLeft
	}
	c.mu.Unlock()
	if !seen && name != c.cfg.NodeName {
		c.queue.QueueBroadcast(&broadcast{name: "leave/" + name, msg: slices.Clone(b)})
	}
}

func (d *delegate) set(n *memberlist.Node, state string) {
	c := d.c
	now := time.Now()
	c.mu.Lock()
	prev, had := c.members[n.Name]
	c.members[n.Name] = &memberState{addr: n.Address(), http: c.httpAddrOf(n), state: state, since: now, node: *n}
	knownChanged := n.Name != c.cfg.NodeName && (had && prev.state == StateAlive) != (state == StateAlive)
	alive, gone := 0, 0
	for name, m := range c.members {
		switch {
		case m.state == StateAlive:
			alive++
		case now.Sub(m.since) > deadRetention:
			delete(c.members, name)
		default:
			gone++
		}
	}
	if gone > deadKept { // forget the longest gone
		for gone > deadKept {
			oldest := ""
			for name, m := range c.members {
				if m.state != StateAlive && (oldest == "" || m.since.Before(c.members[oldest].since)) {
					oldest = name
				}
			}
			delete(c.members, oldest)
			gone--
		}
	}
	c.alive.Store(int32(alive))
	c.mu.Unlock()
	if knownChanged {
		c.signalKnown()
	}
	if state != StateAlive {
		c.log.Info("member gone", "member", n.Name, "state", state)
	} else {
		c.log.Debug("member alive", "member", n.Name, "addr", n.Address())
	}
	c.kickWorker()
}
