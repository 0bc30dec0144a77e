"""The test environment: what the tests need that is not the product (services, stand-ins, index replicas)."""
