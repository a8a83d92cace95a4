"""Avro schemas of the Pit and the code that encodes, decodes, registers and checks them."""
