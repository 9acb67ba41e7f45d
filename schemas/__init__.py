"""marshmallow schemas: the addPhones contract, the mapping file and the CRMs' wire formats."""
