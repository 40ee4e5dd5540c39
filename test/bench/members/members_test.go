package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster"
)

// A small cluster goes through the whole run: it forms, its rings agree after a join,
// a crash and a leave, each change moves about its ideal share and nothing between
// members that stay, and the members' sockets carried bytes in every window.
func TestRunSmallCluster(t *testing.T) {
	t.Parallel()
	cfg := config{N: 5, Rest: 1500 * time.Millisecond, // a probe (1 s) or more in the window at rest
		Timeout: time.Minute, Seeds: 2, Batch: 2, Profile: "lan", Encrypt: true,
		VNodes: 10, Progress: t.Logf, Ring: cluster.RingConfig{Partitions: 2039, ReplicationFactor: 100},
		// Failure detection fast enough for a test, lenient enough for -race on two busy cores;
		// push/pull often, so that a member that missed a join's gossip learns it soon.
		Memberlist: func() *memberlist.Config {
			mc := memberlist.DefaultLocalConfig()
			mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = time.Second, 800*time.Millisecond, 3
			mc.PushPullInterval = 2 * time.Second // a gossip lost on a loaded machine heals in seconds
			return mc
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.RingBuild[5] <= 0 || res.RingBuild[10] <= 0 {
		t.Errorf("ring builds %v: want the default ring timed at 10 and 5 members", res.RingBuild)
	}
	if res.FormedIn <= 0 || res.BalanceHi < 1 || res.BalanceLo > 1 || res.BalanceLo <= 0 {
		t.Errorf("formed in %s, balance %.2f/%.2f: want a positive time and a spread around 1", res.FormedIn, res.BalanceHi, res.BalanceLo)
	}
	var whats []string
	for _, w := range res.Windows {
		whats = append(whats, w.What)
		if w.SentPerSec.Mean <= 0 || w.ReceivedPerSec.Mean <= 0 || w.SentPerSec.Max < w.SentPerSec.Mean {
			t.Errorf("%s: sent %+v, received %+v B/s: want bytes both ways", w.What, w.SentPerSec, w.ReceivedPerSec)
		}
		if w.What == "at rest" {
			continue
		}
		if w.ConvergedIn <= 0 || w.MovedFraction < w.IdealFraction/2 || w.MovedFraction > w.IdealFraction*1.6 || w.MovedBetweenOlds != 0 {
			t.Errorf("%s: converged in %s, moved %.3f (ideal %.3f), %d between stayers: want about the ideal, none between",
				w.What, w.ConvergedIn, w.MovedFraction, w.IdealFraction, w.MovedBetweenOlds)
		}
	}
	if got := strings.Join(whats, ","); got != "at rest,join,crash,leave" {
		t.Errorf("windows %s, want at rest,join,crash,leave", got)
	}
}

// The protocol's messages cost what their encoding says plus memberlist's framing and
// encryption; a Fired of 16 records costs far less a record than one of one.
func TestWireCost(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := wireCost(ctx, true, 200)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]wireRow{}
	for _, r := range rows {
		by[r.What] = r
	}
	hb, one, sixteen := by["Heartbeat"], by["Fired, 1 record"], by["Fired, 16 records"]
	if hb.Encoded == 0 || hb.OnWire < float64(hb.Encoded)+29 || hb.OnWire > float64(hb.Encoded)+200 {
		t.Errorf("Heartbeat: %d B encoded, %.0f on the wire: want the encoding plus framing and AES-GCM's 29 B", hb.Encoded, hb.OnWire)
	}
	if sixteen.OnWire/16 >= one.OnWire/2 || by["Transfer, 500 watermarks"].OnWire <= 0 {
		t.Errorf("Fired: %.0f B for one record, %.0f for 16; Transfer %.0f: want batching to pay", one.OnWire, sixteen.OnWire,
			by["Transfer, 500 watermarks"].OnWire)
	}
}

func TestAddrOf(t *testing.T) {
	for i, want := range map[int]string{0: "127.0.0.2:0", 1: "127.0.0.3:0", 249: "127.0.0.251:0", 250: "127.0.1.2:0"} {
		if got := addrOf(i); got != want {
			t.Errorf("addrOf(%d) = %s, want %s", i, got, want)
		}
	}
}
