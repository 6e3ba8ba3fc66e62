"""Turns a bare server into a mesh node over SSH (asyncssh); the same steps as the cloud-init
user_data that new droplets get. Filled in with the provisioner."""
