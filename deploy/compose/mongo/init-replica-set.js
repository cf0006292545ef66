// Compose healthcheck of the mongo service (mongosh script), safe to run every few seconds:
// the first run initiates the one-member replica set "rs0" (transactions and change streams need a replica
// set); every run then exits non-zero until this node is the writable primary.
try {
  rs.status();
} catch (e) {
  if (e.codeName !== "NotYetInitialized") {
    throw e;
  }
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
}
if (!db.hello().isWritablePrimary) {
  quit(1);
}
