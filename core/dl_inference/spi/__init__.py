"""The service-provider interface: the types plugins build on (re-exported by ``dl_inference``)."""
