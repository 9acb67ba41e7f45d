"""Local stand-ins for the services crm2calls talks to, served over real HTTP on 127.0.0.1."""
