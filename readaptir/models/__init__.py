"""Model references → local folders (:mod:`readaptir.models.hub`) and offline tiny stand-ins (:mod:`readaptir.models.tiny`)."""
