package cluster

import "sync"

// eventQueue carries state-change events to the caller's channel. publish
// may run while a lock is held (a per-key lock during replication, a
// member's recovery lock); it only queues. One goroutine sends, holding
// no lock, and drops an event the caller's channel has no room for, so
// that a slow reader never blocks the cluster. Order is kept.
type eventQueue struct {
	mu     sync.Mutex
	cond   sync.Cond // signalled as delivered grows
	q      []Event
	queued uint64 // events ever queued
	done   uint64 // events ever sent or dropped
	wake   chan struct{}
}

func (c *Cluster) startEvents() {
	c.evq.cond.L = &c.evq.mu
	c.evq.wake = make(chan struct{}, 1)
	if c.events == nil {
		return
	}
	c.loops.Go(c.deliverEvents)
}

// queueEvent queues e for the caller's channel.
func (c *Cluster) queueEvent(e Event) {
	q := &c.evq
	q.mu.Lock()
	q.q = append(q.q, e)
	q.queued++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// deliverEvents sends queued events until the cluster closes, and those
// queued by then.
func (c *Cluster) deliverEvents() {
	q := &c.evq
	for stopping := false; !stopping; {
		select {
		case <-q.wake:
		case <-c.stop:
			stopping = true // deliver what is queued, then stop
		}
		q.mu.Lock()
		batch := q.q
		q.q = nil
		q.mu.Unlock()
		for _, e := range batch {
			select {
			case c.events <- e:
			default:
				c.metrics.eventsDropped.Inc()
			}
		}
		q.mu.Lock()
		q.done += uint64(len(batch))
		q.cond.Broadcast()
		q.mu.Unlock()
	}
}

// flushEvents waits until every event queued before the call has been
// sent to the caller's channel or dropped (or the cluster closed).
func (c *Cluster) flushEvents() {
	if c.events == nil {
		return
	}
	q := &c.evq
	q.mu.Lock()
	defer q.mu.Unlock()
	target := q.queued
	for q.done < target {
		select {
		case <-c.stop:
			return
		default:
		}
		q.cond.Wait()
	}
}
