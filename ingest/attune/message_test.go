package attune

import "testing"

func TestQueueName(t *testing.T) {
	if got, want := QueueName("core.timer", "node-1"), "sensor.core.timer.node-1"; got != want {
		t.Errorf("QueueName(core.timer, node-1) = %q, want %q", got, want)
	}
}
