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

// Task polling intervals: the first poll is immediate, then the interval
// doubles from taskPollMin up to taskPollMax.
const (
	taskPollMin = 10 * time.Millisecond
	taskPollMax = time.Second
)

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
// Cost: one RetrievePropertiesEx of the task's info per poll; the first poll
// is immediate and the interval then doubles from 10 ms up to 1 s, so a task
// that is done within a few milliseconds costs 1-2 round trips. Polling
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
	interval := taskPollMin
	for {
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
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("wait for task %s: %w", ref.Value, ctx.Err())
		case <-timer.C:
		}
		interval = min(2*interval, taskPollMax)
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
