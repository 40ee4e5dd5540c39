package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

// result is one cluster size's figures over the window: per node, the mean and the
// busiest node.
type result struct {
	Nodes          int
	FiresPerSec    float64 // events the stub received, over the cluster
	Repeated       int     // keys received more than once over the run
	SentPerSec     perNode // gossip bytes/s; negative: the build counts none
	ReceivedPerSec perNode
	MessagesPerSec perNode // protocol messages sent/s
	CPUCores       perNode
	RSSMiB         perNode
	StoreMiB       perNode // the data directory's files at the window's end
	StoreBPerRule  float64 // mean store bytes per rule (every node stores every rule)
}

type perNode struct{ Mean, Max float64 }

func (p *perNode) add(x float64, n int) {
	p.Mean += x / float64(n)
	p.Max = max(p.Max, x)
}

func (r result) String() string {
	return fmt.Sprintf("%d nodes: %.0f fires/s; per node %.0f B/s sent, %.0f received, %.0f messages/s, %.3f cores, %.0f MiB RSS, %.1f MiB store",
		r.Nodes, r.FiresPerSec, r.SentPerSec.Mean, r.ReceivedPerSec.Mean, r.MessagesPerSec.Mean, r.CPUCores.Mean, r.RSSMiB.Mean, r.StoreMiB.Mean)
}

// measure runs a cluster of n agents of bin against a fresh stub and reads the window.
func measure(ctx context.Context, cfg config, bin, dir string, n int) (result, error) {
	res := result{Nodes: n}
	st, err := startStub(cfg.Rules, cfg.Every)
	if err != nil {
		return res, err
	}
	defer st.close()
	tok, err := sensorToken()
	if err != nil {
		return res, err
	}
	nodes, err := startCluster(ctx, bin, dir, n, st.url, tok)
	defer stopCluster(nodes)
	if err != nil {
		return res, err
	}
	started := time.Now()
	readyNodes, err := waitFormed(ctx, nodes, 3*time.Minute+time.Duration(n)*30*time.Second)
	if err != nil {
		return res, err
	}
	benchkit.Progress("formed after %s (every partition held once, %d of %d nodes ready); settling %s",
		time.Since(started).Round(time.Millisecond), readyNodes, n, cfg.Settle)
	if err := sleep(ctx, cfg.Settle); err != nil {
		return res, err
	}
	first := make([]sample, n)
	for i, nd := range nodes {
		if first[i], err = sampleNode(nd); err != nil {
			return res, fmt.Errorf("%s: %w", nd.name, err)
		}
	}
	from := time.Now()
	if err := sleep(ctx, cfg.Window); err != nil {
		return res, err
	}
	to := time.Now()
	for i, nd := range nodes {
		last, err := sampleNode(nd)
		if err != nil {
			return res, fmt.Errorf("%s: %w", nd.name, err)
		}
		a := first[i]
		secs := last.at.Sub(a.at).Seconds()
		if a.sent < 0 || last.sent < 0 {
			res.SentPerSec.add(-1, 1)
			res.ReceivedPerSec.add(-1, 1)
		} else {
			res.SentPerSec.add((last.sent-a.sent)/secs, n)
			res.ReceivedPerSec.add((last.received-a.received)/secs, n)
		}
		res.MessagesPerSec.add((last.messages-a.messages)/secs, n)
		res.CPUCores.add((last.cpu-a.cpu).Seconds()/secs, n)
		res.RSSMiB.add(float64(last.rss)/(1<<20), n)
		store := dirBytes(nd.dir)
		res.StoreMiB.add(float64(store)/(1<<20), n)
		res.StoreBPerRule += float64(store) / float64(cfg.Rules) / float64(n)
	}
	if res.SentPerSec.Mean < 0 { // a build without the counter: say so once, not as a mean
		res.SentPerSec, res.ReceivedPerSec = perNode{-1, -1}, perNode{-1, -1}
	}
	events, repeated := st.window(from, to)
	res.FiresPerSec, res.Repeated = float64(events)/to.Sub(from).Seconds(), repeated
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// printResults prints a table per build and, with two builds, the ratios of the second
// (this tree) to the first (the baseline).
func printResults(out io.Writer, cfg config, builds []benchkit.Build, results map[string][]result) {
	fmt.Fprintf(out, "%d interval rules every %s (%.0f fires/s over the cluster), %s window after %s settling; per node: mean (busiest)\n",
		cfg.Rules, cfg.Every, float64(cfg.Rules)/cfg.Every.Seconds(), cfg.Window, cfg.Settle)
	for _, b := range builds {
		fmt.Fprintf(out, "\n%s\n", b.Name)
		printTable(out, results[b.Name])
	}
	if len(builds) == 2 {
		base, this := results[builds[0].Name], results[builds[1].Name]
		fmt.Fprintf(out, "\nratio %s / %s (below 1: this tree costs less)\n", builds[1].Name, builds[0].Name)
		w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "nodes\tsent B/s\treceived B/s\tmessages/s\tCPU\tRSS\tstore\t")
		for i := range min(len(base), len(this)) {
			b, t := base[i], this[i]
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", t.Nodes, ratio(t.SentPerSec.Mean, b.SentPerSec.Mean),
				ratio(t.ReceivedPerSec.Mean, b.ReceivedPerSec.Mean), ratio(t.MessagesPerSec.Mean, b.MessagesPerSec.Mean),
				ratio(t.CPUCores.Mean, b.CPUCores.Mean), ratio(t.RSSMiB.Mean, b.RSSMiB.Mean), ratio(t.StoreMiB.Mean, b.StoreMiB.Mean))
		}
		w.Flush()
	}
}

func ratio(a, b float64) string {
	if a < 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func printTable(out io.Writer, rs []result) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "nodes\tfires/s\trepeated keys\tgossip sent B/s\tgossip received B/s\tprotocol messages sent/s\tCPU cores\tRSS MiB\tstore MiB\tstore B/rule\t")
	bytes := func(p perNode) string {
		if p.Mean < 0 {
			return "– (no counter)"
		}
		return fmt.Sprintf("%.0f (%.0f)", p.Mean, p.Max)
	}
	for _, r := range rs {
		fmt.Fprintf(w, "%d\t%.0f\t%d\t%s\t%s\t%.0f (%.0f)\t%.3f (%.3f)\t%.0f (%.0f)\t%.1f\t%.0f\t\n", r.Nodes, r.FiresPerSec, r.Repeated,
			bytes(r.SentPerSec), bytes(r.ReceivedPerSec), r.MessagesPerSec.Mean, r.MessagesPerSec.Max,
			r.CPUCores.Mean, r.CPUCores.Max, r.RSSMiB.Mean, r.RSSMiB.Max, r.StoreMiB.Mean, r.StoreBPerRule)
	}
	w.Flush()
}
