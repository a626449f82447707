package vcenter

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Task polling schedule. A task's state is read taskPollFirst after the
// task started, then taskPollSecond later, then every taskPollEvery.
//
// Why: polling at once almost always finds the task still running (even
// the simulator finishes its tasks on another goroutine), so the first
// poll waits a little, long enough for the simulator and for vCenter's
// quickest tasks, short enough not to slow them down. Tasks that take
// longer on a real vCenter (reconfigure, clone, destroy: 0.2 s to many
// seconds) are then polled at oslo.vmware's task_poll_interval (0.5 s, what
// the Python drivers pay), after one intermediate poll for the tasks that
// take a few hundred milliseconds. A 1 s task costs 4 polls (25 ms, 225
// ms, 725 ms, 1225 ms) where doubling from 10 ms to 1 s cost 8 and
// oslo.vmware's fixed 0.5 s costs 3; a 10 s task costs 22 (oslo.vmware:
// 21).
const (
	taskPollFirst  = 25 * time.Millisecond
	taskPollSecond = 200 * time.Millisecond
	taskPollEvery  = 500 * time.Millisecond
)

// taskPollDelay is how long to wait before the n-th poll (from 0) of a
// task's state.
func taskPollDelay(n int) time.Duration {
	switch n {
	case 0:
		return taskPollFirst
	case 1:
		return taskPollSecond
	default:
		return taskPollEvery
	}
}

// TaskError reports a vCenter task that ended in the error state. Op names
// the operation (e.g. "power on vm-42"), Task is the task's reference and
// Fault the vSphere fault type, e.g. "InvalidPowerState". Unwrap returns the
// govmomi task error, so that fault.Is and fault.As from
// github.com/vmware/govmomi/fault find the vSphere fault through a TaskError.
type TaskError struct {
	Op      string
	Task    Ref
	Fault   string
	Message string
	err     error
}

// Error implements error.
func (e *TaskError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Fault
	}
	return fmt.Sprintf("task %s of %s failed: %s: %s", e.Task.Value, e.Op, e.Fault, msg)
}

// Unwrap returns the govmomi task error (a task.Error) carrying the vSphere
// fault.
func (e *TaskError) Unwrap() error { return e.err }

// TaskResult is the outcome of a task that succeeded.
type TaskResult struct {
	// Task is the task's reference.
	Task Ref
	// Result is the task's result as vCenter returned it, e.g. a
	// types.ManagedObjectReference for CreateVM_Task; nil for most tasks.
	Result types.AnyType
}

// WaitTask waits for the task to finish and returns its result. A task that
// fails returns a *TaskError (wrapped with op and, for well-known faults, the
// package's sentinels). op names the operation in errors.
//
// Cost: one RetrievePropertiesEx of the task's info per poll; polls come
// 25 ms after the start, 200 ms later, then every 0.5 s, so a task that is
// done within 25 ms costs 1 round trip and a 1 s task 4. Polling
// needs no session-scoped server objects (unlike govmomi's Task.Wait, which
// creates and destroys a PropertyCollector and filter per wait: 5+ round
// trips), survives a re-login and is safe for any number of concurrent
// waits. Safe for concurrent use.
func (s *Session) WaitTask(ctx context.Context, op string, t Ref) (TaskResult, error) {
	c := s.activeClient()
	if c == nil {
		return TaskResult{}, wrapErr(op, ErrNotLoggedIn)
	}
	res, err := s.waitTask(ctx, c, op, t.Reference())
	if err != nil {
		return TaskResult{}, wrapErr(op, err)
	}
	return TaskResult{Task: t, Result: res}, nil
}

// waitTask polls the task's info until it succeeds or fails. A failure is a
// *TaskError (not prefixed with op; callers wrap it).
func (s *Session) waitTask(ctx context.Context, c *vim25.Client, op string, ref types.ManagedObjectReference) (types.AnyType, error) {
	pc := property.DefaultCollector(c)
	for n := 0; ; n++ {
		timer := time.NewTimer(taskPollDelay(n))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("wait for task %s: %w", ref.Value, ctx.Err())
		case <-timer.C:
		}
		s.taskPolls.Add(1)
		var t mo.Task
		if err := pc.RetrieveOne(ctx, ref, []string{"info"}, &t); err != nil {
			return nil, fmt.Errorf("read task %s: %w", ref.Value, err)
		}
		switch t.Info.State {
		case types.TaskInfoStateSuccess:
			return t.Info.Result, nil
		case types.TaskInfoStateError:
			return nil, newTaskError(op, ref, t.Info.Error)
		}
	}
}

// newTaskError builds the TaskError for a failed task.
func newTaskError(op string, ref types.ManagedObjectReference, lmf *types.LocalizedMethodFault) *TaskError {
	if lmf == nil {
		lmf = &types.LocalizedMethodFault{Fault: &types.SystemError{}, LocalizedMessage: "task failed without a fault"}
	}
	e := &TaskError{
		Op:      op,
		Task:    refFrom(ref),
		Fault:   faultName(lmf.Fault),
		Message: lmf.LocalizedMessage,
		err:     task.Error{LocalizedMethodFault: lmf},
	}
	return e
}

// faultName returns the vSphere type name of a fault, e.g.
// "InvalidPowerState".
func faultName(f types.BaseMethodFault) string {
	if f == nil {
		return "unknown"
	}
	t := reflect.TypeOf(f)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name()
}

// runTask starts a task with start and waits for it; start's error (a
// synchronous SOAP fault) and the task's error are returned alike, without
// the op prefix. Every task the package starts goes through here, so that
// the task budget (Config.MaxTasks) holds: a task is started only once a
// slot is free, and the slot is held until the task has ended.
func (s *Session) runTask(ctx context.Context, c *vim25.Client, op string,
	start func() (types.ManagedObjectReference, error)) (types.AnyType, error) {
	select {
	case s.tasks <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a vCenter task slot: %w", ctx.Err())
	}
	defer func() { <-s.tasks }()
	ref, err := start()
	if err != nil {
		return nil, err
	}
	return s.waitTask(ctx, c, op, ref)
}

// TasksInFlight returns how many vCenter tasks this session is running
// (started and not yet ended), for metrics.
func (s *Session) TasksInFlight() int { return len(s.tasks) }

// TaskPolls returns how many times this session has read a task's state
// while waiting for tasks (each one RetrievePropertiesEx, counted in Calls
// too), for metrics and to tell task polls from other property reads.
func (s *Session) TaskPolls() int64 { return s.taskPolls.Load() }
