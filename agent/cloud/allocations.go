package cloud

import (
	"context"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
)

// allocationRequest is one consumer's part of POST /allocations (1.28).
type allocationRequest struct {
	Allocations        map[string]allocationResources `json:"allocations"`
	ProjectID          string                         `json:"project_id"`
	UserID             string                         `json:"user_id"`
	ConsumerGeneration *int64                         `json:"consumer_generation"`
}

type allocationResources struct {
	Resources map[string]int64 `json:"resources"`
}

// MoveAllocations moves every allocation of the source consumer to the
// target consumer in one POST /allocations (microversion 1.28), as nova's
// report client move_allocations does when a move is reverted or a
// migration's allocations go back to the instance: the source is emptied,
// the target gets the source's allocations (replacing any it had), each
// with its consumer generation, so a concurrent change fails the move
// with a 409 *HTTPError. It reports whether the source had anything to
// move; without allocations nothing is posted.
func (p *Placement) MoveAllocations(ctx context.Context, sourceConsumer, targetConsumer string) (bool, error) {
	src, err := p.Allocations(ctx, sourceConsumer)
	if err != nil {
		return false, err
	}
	if len(src.Allocations) == 0 {
		p.log.Debug().Str("consumer", sourceConsumer).Msg("no allocations to move")
		return false, nil
	}
	dst, err := p.Allocations(ctx, targetConsumer)
	if err != nil {
		return false, err
	}
	if len(dst.Allocations) > 0 {
		p.log.Warn().Str("consumer", targetConsumer).Interface("allocations", dst.Allocations).
			Msg("overwriting the current allocations of the consumer")
	}
	moved := make(map[string]allocationResources, len(src.Allocations))
	for rp, a := range src.Allocations {
		moved[rp] = allocationResources{Resources: a.Resources}
	}
	body := map[string]allocationRequest{
		sourceConsumer: {Allocations: map[string]allocationResources{}, ProjectID: src.ProjectID,
			UserID: src.UserID, ConsumerGeneration: src.ConsumerGeneration},
		targetConsumer: {Allocations: moved, ProjectID: src.ProjectID,
			UserID: src.UserID, ConsumerGeneration: dst.ConsumerGeneration},
	}
	c := p.at(MicroversionAllocations)
	_, err = c.Post(ctx, c.ServiceURL("allocations"), body, nil, &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
	if err != nil {
		return false, fmt.Errorf("placement: move allocations of consumer %s to %s: %w", sourceConsumer, targetConsumer, httpError(err))
	}
	p.log.Info().Str("from", sourceConsumer).Str("to", targetConsumer).Msg("moved allocations")
	return true, nil
}
