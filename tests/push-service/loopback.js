// Preloaded (node -r) before web-push-testing's server.js, which listens on every interface:
// a listen given only a port binds 127.0.0.1 instead. The tests never expose the service.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
