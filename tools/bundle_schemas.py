"""Write edged/schemas/bundle/*.schema.json: self-contained schemas for plain jsonschema (see edged/mqtt/schemas.py)."""

from edged.mqtt.schemas import write_bundles

if __name__ == "__main__":
    for path in write_bundles():
        print(path)
