ann: {uid: 1000}
