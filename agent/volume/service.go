package volume

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Versions written to the services row: cinder's RPC clients cap the
// messages they send to the lowest versions of the cinder-volume rows.
const (
	// RPCVersion is cinder Zed's VolumeAPI.RPC_API_VERSION.
	RPCVersion = "3.18"
	// ObjectsVersion is cinder Zed's OBJ_VERSIONS.get_current().
	ObjectsVersion = "1.39"
	// Binary and Topic are cinder-volume's.
	Binary = "cinder-volume"
	Topic  = "cinder-volume"
)

// serviceRow is the agent's row in cinder's services table.
type serviceRow struct {
	db   *sql.DB
	host string // <host>@<backend>
	az   string

	id   int64
	uuid string
}

// register finds the row of host and binary cinder-volume (not deleted)
// and raises its versions, or creates it, as cinder's Service.start and
// _create_service_ref do.
func (s *serviceRow) register(ctx context.Context) error {
	now := utcNow()
	var uuid sql.NullString
	err := s.db.QueryRowContext(ctx, "SELECT id, uuid FROM services WHERE host = ? AND `binary` = ? AND deleted = 0 ORDER BY id LIMIT 1",
		s.host, Binary).Scan(&s.id, &uuid)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		s.uuid = newUUID()
		res, err := s.db.ExecContext(ctx, "INSERT INTO services (created_at, deleted, host, `binary`, topic, report_count, disabled, availability_zone, rpc_current_version, object_current_version, replication_status, frozen, uuid) VALUES (?, 0, ?, ?, ?, 0, 0, ?, ?, ?, 'disabled', 0, ?)",
			now, s.host, Binary, Topic, s.az, RPCVersion, ObjectsVersion, s.uuid)
		if err != nil {
			return fmt.Errorf("create the cinder-volume service row: %w", err)
		}
		if s.id, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("create the cinder-volume service row: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("look up the cinder-volume service row: %w", err)
	}
	s.uuid = uuid.String
	if !uuid.Valid || uuid.String == "" {
		s.uuid = newUUID()
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE services SET rpc_current_version = ?, object_current_version = ?, topic = ?, availability_zone = ?, uuid = ?, updated_at = ? WHERE id = ?",
		RPCVersion, ObjectsVersion, Topic, s.az, s.uuid, now, s.id); err != nil {
		return fmt.Errorf("update the cinder-volume service row: %w", err)
	}
	return nil
}

// errServiceGone: the row was deleted (cinder-manage service remove).
var errServiceGone = errors.New("the service row is gone")

// heartbeat is cinder's report_state: report_count+1 and updated_at now.
func (s *serviceRow) heartbeat(ctx context.Context) error {
	res, err := s.db.ExecContext(ctx, "UPDATE services SET report_count = report_count + 1, updated_at = ? WHERE id = ? AND deleted = 0", utcNow(), s.id)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return errServiceGone
	}
	return nil
}

// utcNow is cinder's timeutils.utcnow(): naive UTC, microseconds.
func utcNow() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
