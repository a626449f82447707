#!/usr/bin/python3
"""A real nova notification consumer, for the end-to-end tests.

Listens with oslo.messaging's notification listener (the way ceilometer,
searchlight or any nova notification consumer does) on the legacy and
versioned nova topics, and loads every versioned payload into nova's own
notification payload classes (nova.notifications.objects), which checks
every field against nova's types: a payload nova could not have sent fails
to load. One JSON line per notification on stdout:

  {"event": "notification", "topic": "versioned_notifications",
   "publisher_id": ..., "event_type": ..., "priority": ...,
   "payload_class": "InstanceActionPayload", "load_error": null,
   "payload": {...}}

The first line is {"event": "ready"} once the listener consumes.

Usage: nova_notifications.py --url TRANSPORT_URL [--exchange nova]
"""
import argparse
import json
import signal
import sys
import threading

from oslo_config import cfg
import oslo_messaging

# nova's payload classes register themselves as notification objects only;
# register them as ordinary objects so obj_from_primitive finds them (what
# nova's own notification sample tests do).
from nova.notifications.objects import exception as _exception  # noqa: F401
from nova.notifications.objects import instance as _instance  # noqa: F401
from nova.objects import base as nova_base
from oslo_versionedobjects import base as ovo_base


def out(line):
    sys.stdout.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


class Endpoint(object):
    def __init__(self, topic):
        self.topic = topic

    def _handle(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        line = {"event": "notification", "topic": self.topic,
                "publisher_id": publisher_id, "event_type": event_type,
                "priority": priority, "payload": payload,
                "request_id": ctxt.get("request_id"),
                "payload_class": None, "load_error": None}
        if self.topic.startswith("versioned"):
            try:
                obj = nova_base.NovaObject.obj_from_primitive(payload)
                line["payload_class"] = obj.obj_name()
                # every field nova would set must be set
                missing = [f for f in obj.fields if not obj.obj_attr_is_set(f)]
                if missing:
                    line["load_error"] = "fields not set: %s" % missing
            except Exception as e:  # report, do not die
                line["load_error"] = "%s: %s" % (type(e).__name__, e)
        out(line)

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._handle("INFO", ctxt, publisher_id, event_type, payload, metadata)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._handle("ERROR", ctxt, publisher_id, event_type, payload,
                     metadata)

    def warn(self, ctxt, publisher_id, event_type, payload, metadata):
        self._handle("WARN", ctxt, publisher_id, event_type, payload,
                     metadata)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--exchange", default="nova")
    ap.add_argument("--pool", default="vcagent-test")
    args = ap.parse_args()

    nova_base.NovaObjectRegistry.register_notification_objects()
    # The payload classes' constructors build a payload from live nova
    # objects (an Instance, a context); obj_from_primitive calls them with no
    # arguments. Loading needs only the plain object constructor: the field
    # values are then set, and type-checked, from the primitive.
    for cls in nova_base.NovaObjectRegistry.notification_classes:
        cls.__init__ = lambda self, *a, **kw: ovo_base.VersionedObject.__init__(self)
    conf = cfg.ConfigOpts()
    conf([])
    transport = oslo_messaging.get_notification_transport(conf, url=args.url)
    listeners = []
    for topic in ("notifications", "versioned_notifications"):
        target = oslo_messaging.Target(topic=topic, exchange=args.exchange)
        listener = oslo_messaging.get_notification_listener(
            transport, [target], [Endpoint(topic)], executor="threading",
            pool=args.pool + "-" + topic)
        listener.start()
        listeners.append(listener)
    out({"event": "ready"})

    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: done.set())
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    for listener in listeners:
        listener.stop()


if __name__ == "__main__":
    main()
